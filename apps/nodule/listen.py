"""``fathom nodule listen``: receive chest CT from a PACS, find nodules, send SEG + SR back.

``PacsWorker`` runs a ``StorageSCP``; each complete series that arrives is analysed in the SCP's
worker thread (the SCP keeps accepting meanwhile) and its SEG and SR go back to the PACS by
C-STORE (``pacs="AET@host:port"``) or STOW-RS (``dicomweb=URL``). Series that are not CT (our own
SEG and SR coming back, scouts of other modalities) are skipped.

Work folder layout::

    work/incoming/<StudyUID>/<SeriesUID>/*.dcm   what the PACS sent
    work/results/<SeriesUID>/                    what ``analyse`` wrote (SEG, SR, report)
    work/ledger.jsonl                            one JSON line per series: done, skipped or failed

Nothing is dropped silently: a series that fails (unreadable, analysis error, PACS refused the
results) is logged with its UID and recorded in the ledger with the stage and the error, and its
files stay in the work folder.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import pydicom
import typer

from connectors.dicom.dicomweb import DicomWebStore
from connectors.dicom.pacs import PacsClient, PacsError, PacsNode, safe_uid
from connectors.dicom.scp import StorageSCP

log = logging.getLogger(__name__)

__all__ = ["AnalyseFn", "PacsWorker", "default_analyse", "listen_command"]

#: ``analyse(folder, out_dir)`` -> ``{"series_uid", "nodules": [...], "outputs": {"seg", "sr", "report"}}``
#: (or an object with ``to_json()`` returning that dict).
AnalyseFn = Callable[[Path, Path], Any]


def default_analyse(model: Path | None = None) -> AnalyseFn:
    """The nodule pipeline as an ``AnalyseFn``; the detector loads once, at the first series.

    Args:
        model: Model folder (None: the shipped ``models/nodule-detector``).
    """
    detectors: list[Any] = []
    lock = threading.Lock()

    def analyse(folder: Path, out_dir: Path) -> Any:
        from apps.nodule.detect import NoduleDetector
        from apps.nodule.pipeline import analyse as run_pipeline

        with lock:
            if not detectors:
                detectors.append(NoduleDetector.load(model))
        return run_pipeline(folder, out_dir, detector=detectors[0])

    return analyse


def _result_dict(result: Any) -> dict[str, Any]:
    data = result.to_json() if hasattr(result, "to_json") else result
    if not isinstance(data, dict) or not isinstance(data.get("outputs"), dict):
        raise ValueError(f"analyse returned {type(result).__name__}, expected a dict with an 'outputs' dict")
    return data


def _modalities(folder: Path) -> set[str]:
    """Modalities of the instances in ``folder`` (headers only)."""
    files = sorted(folder.glob("*.dcm"))
    if not files:
        raise ValueError(f"{folder} holds no .dcm files")
    found = set()
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
        found.add(str(ds.get("Modality", "") or "?"))
    return found


class PacsWorker:
    """Listens for CT series, analyses each and sends its results back to the PACS.

    Args:
        work_dir: Work folder (see the module docstring).
        analyse: ``analyse(folder, out_dir)``; default: the nodule pipeline with ``model``.
        pacs: Where results go by C-STORE, ``PacsNode`` or ``"AET@host:port"``.
        dicomweb: Where results go by STOW-RS instead (a DICOMweb root URL).
        ae_title: Our AE title (the PACS must know it as a destination).
        host: Address to listen on.
        port: DICOM port to listen on (0: a free one).
        settle_seconds: Quiet time after which a received series counts as complete.
        model: Model folder for the default ``analyse``.
        timeout: Seconds for each network operation with the PACS.

    Raises:
        ValueError: Both ``pacs`` and ``dicomweb``, or an invalid node, URL or AE title.
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        analyse: AnalyseFn | None = None,
        pacs: PacsNode | str | None = None,
        dicomweb: str | None = None,
        ae_title: str = "FATHOM",
        host: str = "127.0.0.1",
        port: int = 11112,
        settle_seconds: float = 3.0,
        model: Path | None = None,
        timeout: float = 30.0,
    ) -> None:
        if pacs and dicomweb:
            raise ValueError("results go to one place: give pacs or dicomweb, not both")
        self.work_dir = Path(work_dir)
        self.analyse = analyse or default_analyse(model)
        self.client = PacsClient(pacs, ae_title=ae_title, timeout=timeout) if pacs else None
        self.web = DicomWebStore(dicomweb, timeout=timeout) if dicomweb else None
        self.destination = str(self.client.peer) if self.client else (self.web.url if self.web else None)
        self.ledger = self.work_dir / "ledger.jsonl"
        self.records: list[dict[str, Any]] = []
        self._analysed = threading.Condition()
        self.scp = StorageSCP(
            self.work_dir / "incoming",
            self.handle_series,
            ae_title=ae_title,
            host=host,
            port=port,
            settle_seconds=settle_seconds,
        )

    def start(self) -> PacsWorker:
        """Start listening (raises ``PacsError`` when the port is taken)."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.scp.start()
        log.info("listening as %s; results to %s", self.scp.node, self.destination or "the work folder only")
        return self

    def stop(self) -> None:
        """Stop listening; a series being analysed is finished first."""
        self.scp.stop()

    def __enter__(self) -> PacsWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run(self, *, once: bool = False, timeout: float | None = None) -> list[dict[str, Any]]:
        """Serve until interrupted, ``timeout`` seconds pass, or (``once``) one CT series was handled.

        Returns:
            The ledger records of this run (``status`` "done", "failed" or "skipped").
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._analysed:
            while not (once and any(r["status"] != "skipped" for r in self.records)):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._analysed.wait(0.5 if left is None else min(left, 0.5))
            return list(self.records)

    def handle_series(self, folder: Path, series_uid: str) -> dict[str, Any]:
        """Analyse one received series and send its results; the ``StorageSCP`` callback.

        Returns:
            The ledger record written for it.
        """
        started = time.monotonic()
        record: dict[str, Any] = {"series_uid": series_uid, "folder": str(folder)}
        stage = "read"
        try:
            modalities = _modalities(folder)
            if modalities != {"CT"}:
                log.info("skipping series %s: modality %s, not CT", series_uid, "/".join(sorted(modalities)))
                return self._record(record, "skipped", reason=f"modality {'/'.join(sorted(modalities))}")
            stage = "analyse"
            out_dir = self.work_dir / "results" / safe_uid(series_uid)
            result = _result_dict(self.analyse(folder, out_dir))
            outputs = {k: str(v) for k, v in result["outputs"].items() if v}
            record.update(nodules=len(result.get("nodules") or []), outputs=outputs)
            stage = "send"
            record["sent"] = self._send([Path(outputs[k]) for k in ("seg", "sr") if k in outputs])
        except Exception as e:
            log.error("series %s failed at %s: %s", series_uid, stage, e, exc_info=stage == "analyse")
            return self._record(record, "failed", stage=stage, error=f"{type(e).__name__}: {e}")
        record["seconds"] = round(time.monotonic() - started, 3)
        log.info("series %s done: %d nodule(s), results sent to %s", series_uid, record["nodules"],
                 self.destination or "nowhere (no destination)")  # fmt: skip
        return self._record(record, "done")

    def _send(self, files: list[Path]) -> list[str]:
        """Send SEG/SR files to the destination; the SOP Instance UIDs sent."""
        if not files or (self.client is None and self.web is None):
            return []
        if self.client is not None:
            return self.client.store(files).stored
        assert self.web is not None
        return self.web.store(files)

    def _record(self, record: dict[str, Any], status: str, **extra: Any) -> dict[str, Any]:
        record = {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "status": status,
            **record,
            **extra,
        }
        if self.destination:
            record.setdefault("destination", self.destination)
        with self._analysed:
            self.ledger.parent.mkdir(parents=True, exist_ok=True)
            with self.ledger.open("a") as f:
                f.write(json.dumps(record) + "\n")
            self.records.append(record)
            self._analysed.notify_all()
        return record


def listen_command(
    ae_title: Annotated[str, typer.Option("--ae-title", help="Our AE title (known to the PACS).")] = "FATHOM",
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="DICOM port to listen on.")] = 11112,
    pacs: Annotated[
        str | None, typer.Option("--pacs", help="Send results by C-STORE to AET@host:port.")
    ] = None,
    dicomweb: Annotated[
        str | None, typer.Option("--dicomweb", help="Send results by STOW-RS to this DICOMweb URL.")
    ] = None,
    work: Annotated[
        Path, typer.Option("--work", help="Work folder: incoming series, results, ledger.jsonl.")
    ] = Path("fathom-work"),
    model: Annotated[Path | None, typer.Option("--model", help="Model folder (default: shipped).")] = None,
    settle: Annotated[
        float, typer.Option("--settle", help="Seconds of quiet after which a series is complete.")
    ] = 3.0,
    once: Annotated[bool, typer.Option("--once", help="Exit after one CT series (scripts, tests).")] = False,
) -> None:
    """Receive CT series from a PACS, find lung nodules, send DICOM SEG + SR back."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if settle < 0:
        raise typer.BadParameter(f"must be >= 0, got {settle}", param_hint="--settle")
    if model is not None and not model.is_dir():
        raise typer.BadParameter(f"{model} is not a folder", param_hint="--model")
    try:
        node = PacsNode.parse(pacs) if pacs else None
        worker = PacsWorker(work, pacs=node, dicomweb=dicomweb, ae_title=ae_title, host=host, port=port,
                            settle_seconds=settle, model=model)  # fmt: skip
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    try:
        worker.start()
    except PacsError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(
        f"listening as {worker.scp.node}; results to {worker.destination or work}; ledger {worker.ledger}"
    )
    try:
        records = worker.run(once=once)
    except KeyboardInterrupt:
        records = worker.records
    finally:
        worker.stop()
    failed = [r for r in records if r["status"] == "failed"]
    typer.echo(f"{len(records)} series handled, {len(failed)} failed (see {worker.ledger})")
    if once and failed:
        raise typer.Exit(code=1)
