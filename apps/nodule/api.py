"""The lung-nodule HTTP routes: upload a CT study, get the nodules and the DICOM SEG, SR and report.

- ``POST /nodule/detect``: a multipart upload (field ``files``) of the DICOM files of one study, or of
  one ``.zip`` holding them (folders and a DICOMDIR inside are fine). The study is analysed with
  ``apps.nodule.pipeline.analyse``; its outputs are kept under ``<results_dir>/<id>/`` and the answer is
  the ``fathom nodule detect --json`` shape plus ``id`` and ``downloads`` (URL per output).
- ``GET /nodule/results/{id}/{kind}``: one output, ``kind`` in ``seg``, ``sr`` (``application/dicom``),
  ``report`` (Markdown) or ``json`` (the ``POST`` answer again).

The routes are plain ``def``, run in FastAPI's threadpool; at most ``MAX_CONCURRENT`` studies are
analysed at a time (more: 429 with ``Retry-After``). Results older than ``max_age_s`` are deleted
when a new study arrives.

Errors (the shared ``{"error", "detail"}`` body, naming the reason): no file or a mix of zip and files
is a 400; a damaged, encrypted or unsafe zip (absolute paths, ``..``, links) a 400; an upload that is
not DICOM Part 10 a 415; more than ``MAX_FILES`` files or ``MAX_UPLOAD_BYTES`` (``MAX_UNZIPPED_BYTES``
unpacked; limits in ``apps.nodule.uploads``) a 413; DICOM that holds no readable CT series a 422 with
the reader's reason. Messages name the uploaded file as the client sent it, never a server path. The
app's request-body limit applies too (``apps.api`` raises it for this route only).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, File, HTTPException, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from apps.nodule.uploads import (
    MAX_AGE_S,
    RESULT_ID,
    UploadError,
    prune_results,
    public_message,
    save_uploads,
)
from core.serving import ErrorBody

if TYPE_CHECKING:
    from apps.nodule.detect import NoduleDetector

MAX_CONCURRENT = 2
KINDS = ("seg", "sr", "report", "json")
MEDIA_TYPES = {
    "seg": "application/dicom",
    "sr": "application/dicom",
    "report": "text/markdown",
    "json": "application/json",
}

_log = logging.getLogger(__name__)


class NoduleOut(BaseModel):
    """One reported nodule (centre in LPS patient mm, x, y, z)."""

    center_mm: list[float] = Field(min_length=3, max_length=3)
    diameter_mm: float
    volume_mm3: float
    mean_hu: float
    confidence: float


class DetectResponse(BaseModel):
    """The ``fathom nodule detect --json`` shape with ``outputs`` as file names, plus the result id."""

    id: str = Field(description="The result's id, for GET /nodule/results/{id}/{kind}.")
    series_uid: str
    study_uid: str
    nodules: list[NoduleOut]
    outputs: dict[str, str | None] = Field(description="kind -> file name (None: not written).")
    downloads: dict[str, str] = Field(description="kind -> URL, for each output written.")
    notes: list[str]
    seconds: float
    timings: dict[str, float]


def _files_required(schema: dict[str, Any]) -> None:
    schema["required"] = ["files"]
    schema["properties"]["files"].pop("default", None)


class DetectUpload(BaseModel):
    """The upload of one CT study."""

    # ``files`` is required in the OpenAPI, but a form without it is read as no file, so that the
    # route answers its own 400 saying what to send rather than a bare "Field required".
    model_config = ConfigDict(json_schema_extra=_files_required)

    files: list[UploadFile] = Field(
        default=[], description="The study's DICOM files, or one .zip of them.", min_length=1
    )


def make_router(
    get_detector: Callable[[], NoduleDetector],
    results_dir: str | Path,
    *,
    max_age_s: float = MAX_AGE_S,
) -> APIRouter:
    """The ``/nodule`` routes over the detector that ``get_detector`` returns.

    Args:
        get_detector: returns the loaded ``NoduleDetector``; called per request after the upload was
            checked, so it should be cheap after the first call (``LazyResource.get``).
        results_dir: where each analysis keeps its outputs (``<results_dir>/<id>/``); created on use.
        max_age_s: results older than this are deleted when a new study is analysed.

    Returns:
        A router with prefix ``/nodule``.

    Raises:
        TypeError: ``get_detector`` is not callable.
        ValueError: ``max_age_s`` is not positive.
    """
    if not callable(get_detector):
        raise TypeError(f"get_detector must be callable, got {type(get_detector).__name__}")
    if not max_age_s > 0:
        raise ValueError(f"max_age_s must be positive, got {max_age_s!r}")
    results = Path(results_dir)
    router = APIRouter(prefix="/nodule", tags=["nodule"])
    slots = threading.BoundedSemaphore(MAX_CONCURRENT)

    @router.post(
        "/detect",
        response_model=DetectResponse,
        summary="Find lung nodules in a CT study",
        responses={
            400: {
                "model": ErrorBody,
                "description": "No file, a zip mixed with files, or a damaged or unsafe zip",
            },
            413: {"model": ErrorBody, "description": "Too many files or too many bytes"},
            415: {
                "model": ErrorBody,
                "description": "An upload is not DICOM Part 10 (nor a zip of DICOM files)",
            },
            429: {
                "model": ErrorBody,
                "description": "The server is analysing as many studies as it can; retry later",
            },
        },
    )
    def detect(upload: Annotated[DetectUpload, File()]) -> dict[str, Any]:
        """Analyse one CT study: the CT series is picked, read, searched for nodules.

        Upload the DICOM files of one study (other series, e.g. a localizer, may come along: the
        full-coverage CT series is chosen), or one ``.zip`` of them. Writes a DICOM SEG (when a
        nodule is found), a TID 1500 SR and a report; download them from ``downloads``.
        """
        if not slots.acquire(blocking=False):
            raise HTTPException(
                429,
                "the server is busy analysing other studies; retry shortly",
                headers={"Retry-After": "10"},
            )
        try:
            return _detect(upload.files)
        finally:
            slots.release()

    def _detect(files: list[UploadFile]) -> dict[str, Any]:
        from connectors.dicom.reader import DicomError

        with tempfile.TemporaryDirectory(prefix="fathom-nodule-") as tmp:
            study = Path(tmp) / "study"
            try:
                names = save_uploads(files, study)
            except UploadError as exc:
                raise HTTPException(exc.status, exc.detail) from None
            detector = get_detector()
            from apps.nodule.pipeline import analyse  # the detector is loaded: torch is imported already

            prune_results(results, max_age_s)
            result_id = uuid.uuid4().hex
            out = results / result_id
            try:
                analysis = analyse(study, out, detector=detector)
            except DicomError as exc:
                shutil.rmtree(out, ignore_errors=True)
                reason = public_message(exc.reason, names, [study.resolve(), study])
                where = public_message(exc.path or "", names, [study.resolve(), study])
                detail = reason if where in ("", "the upload") else f"{where}: {reason}"
                raise HTTPException(422, f"the upload cannot be analysed: {detail}") from None
            except BaseException:
                shutil.rmtree(out, ignore_errors=True)
                raise
        body = analysis.to_json()
        outputs = {k: (Path(v).name if v is not None else None) for k, v in analysis.outputs.items()}
        body.update(
            id=result_id,
            outputs=outputs,
            downloads={k: f"{router.prefix}/results/{result_id}/{k}" for k, v in outputs.items() if v},
        )
        # The stored result.json is what GET .../json returns: this answer, without server paths.
        (out / "result.json").write_text(json.dumps(body, indent=2) + "\n")
        _log.info("nodule study analysed: result %s, %d nodule(s)", result_id, len(body["nodules"]))
        return body

    @router.get(
        "/results/{result_id}/{kind}",
        summary="Download an output of an analysis",
        response_class=FileResponse,
        responses={
            200: {
                "content": {"application/dicom": {}, "text/markdown": {}, "application/json": {}},
                "description": "The file (seg, sr: application/dicom; report: Markdown; json: the result)",
            },
            404: {"model": ErrorBody, "description": "No such result, or no such output for it"},
        },
    )
    def result_file(
        result_id: Annotated[str, PathParam(pattern=RESULT_ID.pattern, description="The id POST returned.")],
        kind: Annotated[str, PathParam(description="seg, sr, report or json", max_length=16)],
    ) -> FileResponse:
        """One output of an earlier analysis (``seg`` is absent when no nodule was found)."""
        if kind not in KINDS:
            raise HTTPException(404, f"unknown output {kind!r}; choose one of {', '.join(KINDS)}")
        manifest = results / result_id / "result.json"
        if not manifest.is_file():
            hours = max_age_s / 3600
            raise HTTPException(404, f"no result {result_id!r} (unknown, or deleted after {hours:g} h)")
        name = json.loads(manifest.read_text()).get("outputs", {}).get(kind)
        path = results / result_id / str(name) if name else None
        if path is None or "/" in str(name) or not path.is_file():
            why = " (no nodule was found, so no SEG was written)" if kind == "seg" else ""
            raise HTTPException(404, f"result {result_id!r} has no {kind} output{why}")
        filename = {"report": f"nodule-report-{result_id}.md", "json": f"nodule-result-{result_id}.json"}
        return FileResponse(path, media_type=MEDIA_TYPES[kind], filename=filename.get(kind, str(name)))

    return router


__all__ = ["DetectResponse", "DetectUpload", "NoduleOut", "make_router"]
