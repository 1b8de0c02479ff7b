"""Nodule analysis over a folder of studies: in-process, or as a Ray Data pipeline.

``analyse_folder(root, out_dir)`` catalogues every study under ``root`` (``scan``: headers only),
picks each study's CT series (``pick_ct_series``) and runs ``pipeline.analyse`` on it, writing that
series' SEG, SR, ``report.md`` and ``result.json`` into ``out_dir/<SeriesInstanceUID>/``:

- in-process (the default): one detector, the studies one after another, with a progress bar;
- ``use_ray=True``: ``ray.data.from_items`` of the studies, then ``map`` with a class-based UDF
  (``_AnalyseStudy``) that loads the detector once per worker (actor). On a cluster the study
  folders, the model folder and ``out_dir`` must be on storage every node sees.

Nothing is dropped silently: every study gets a record, ``status`` ``done`` (the ``fathom nodule
detect --json`` result plus the study), ``failed`` (the analysis raised: ``error`` says why; the
other studies go on) or ``skipped`` (no CT series in it); files ``scan`` could not read are listed
in ``summarise``'s ``skipped_files``. ``fathom nodule batch ROOT --out DIR [--ray]`` writes it all
to ``DIR/batch.json``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from connectors.dicom.catalog import Catalog, StudyInfo, pick_ct_series, scan
from connectors.dicom.pacs import safe_uid
from connectors.dicom.reader import DicomError

BATCH_JSON = "batch.json"


@dataclass
class StudyJob:
    """One study to analyse: its CT series, or why it has none.

    Args:
        index: Position in the catalog (results come back in this order).
        study_uid: StudyInstanceUID.
        study: The study's folder (the common folder of its CT series' files).
        series_uid: The picked CT series (empty when none).
        files: That series' files.
        reason: Why the study is skipped (no CT series), else empty.
    """

    index: int
    study_uid: str
    study: str
    series_uid: str = ""
    files: list[str] = field(default_factory=list)
    reason: str = ""

    def record(self, status: str, **more: Any) -> dict[str, Any]:
        """The result record of this study with ``status`` and ``more`` fields."""
        return {
            "index": self.index,
            "study": self.study,
            "study_uid": self.study_uid,
            "series_uid": self.series_uid,
            "status": status,
            **more,
        }


def _study_folder(study: StudyInfo) -> str:
    parents = [str(Path(p).parent) for s in study.series for p in s.files]
    return os.path.commonpath(parents) if parents else ""


def find_studies(root: str | Path) -> tuple[list[StudyJob], Catalog]:
    """Every study under ``root`` with the CT series to analyse.

    Returns:
        The jobs (one per study, in catalog order) and the catalog (its ``skipped`` files).

    Raises:
        DicomError: ``root`` does not exist or is an unreadable DICOMDIR.
    """
    catalog = scan(root)
    jobs = []
    for i, study in enumerate(catalog.studies):
        job = StudyJob(i, study.study_uid, _study_folder(study))
        try:
            series = pick_ct_series(Catalog(root=Path(job.study or root), studies=[study]))
        except DicomError as exc:
            job.reason = str(exc)
        else:
            job.series_uid, job.files = series.series_uid, [str(p) for p in series.files]
            job.study = os.path.commonpath([str(Path(p).parent) for p in series.files])
        jobs.append(job)
    return jobs, catalog


def _analyse_job(job: StudyJob, out_dir: Path, detector: Any) -> dict[str, Any]:
    """One study's record; an error becomes a ``failed`` record rather than an exception."""
    from apps.nodule.pipeline import analyse

    if job.reason:
        return job.record("skipped", error=job.reason)
    try:
        analysis = analyse(job.files, out_dir / safe_uid(job.series_uid), detector=detector)
    except Exception as exc:  # one bad study must not stop the others; the record keeps the reason
        return job.record(
            "failed", error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        )
    return job.record("done", **analysis.to_json())


class _AnalyseStudy:
    """Ray Data UDF: loads the detector once per worker, then analyses one study per row."""

    def __init__(self, out_dir: str, model_dir: str | None) -> None:
        import torch

        from apps.nodule.detect import NoduleDetector

        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1)))
        self.out_dir = Path(out_dir)
        self.detector = NoduleDetector.load(model_dir)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        job = StudyJob(**json.loads(row["job"]))
        # one JSON column: records differ in shape (nodules, missing SEG), which Arrow cannot unify
        return {"index": job.index, "record": json.dumps(_analyse_job(job, self.out_dir, self.detector))}


def _run_ray(
    jobs: list[StudyJob], out_dir: Path, model_dir: str | None, num_cpus: int | None, num_gpus: float
) -> list[dict[str, Any]]:
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    cpus = num_cpus or int(ray.available_resources().get("CPU", 1))
    workers = max(1, min(len(jobs), cpus))
    items = [{"job": json.dumps(job.__dict__)} for job in jobs]
    rows = (
        ray.data.from_items(items, override_num_blocks=len(items))
        .map(
            _AnalyseStudy,
            fn_constructor_kwargs={"out_dir": str(out_dir), "model_dir": model_dir},
            concurrency=workers,
            num_cpus=1,
            num_gpus=num_gpus or None,
        )
        .take_all()
    )
    records = [json.loads(r["record"]) for r in rows]
    return sorted(records, key=lambda r: r["index"])


def analyse_folder(
    root: str | Path,
    out_dir: str | Path,
    *,
    model_dir: str | Path | None = None,
    use_ray: bool = False,
    num_cpus: int | None = None,
    num_gpus: float = 0.0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Analyse the CT series of every study under ``root``; one record per study, in catalog order.

    Args:
        root: A folder (searched recursively) or a DICOMDIR.
        out_dir: Results go to ``out_dir/<SeriesInstanceUID>/`` (created).
        model_dir: The model folder (None: the shipped ``models/nodule-detector``).
        use_ray: Run as a Ray Data pipeline (a local Ray runtime is started when none is up).
        num_cpus: Ray: CPUs of the local runtime started here and the most workers (default: all).
        num_gpus: Ray: GPUs per worker (e.g. 0.5 puts two workers on a GPU).
        progress: In-process: show a progress bar.

    Returns:
        Per study ``{"index", "study", "study_uid", "series_uid", "status", ...}``: ``done`` with the
        ``fathom nodule detect --json`` fields, ``failed`` or ``skipped`` with ``error``.

    Raises:
        DicomError: ``root`` cannot be scanned.
        FileNotFoundError: No model in ``model_dir``.
    """
    jobs, _ = find_studies(root)
    return run_jobs(
        jobs,
        out_dir,
        model_dir=model_dir,
        use_ray=use_ray,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        progress=progress,
    )


def run_jobs(
    jobs: list[StudyJob],
    out_dir: str | Path,
    *,
    model_dir: str | Path | None = None,
    use_ray: bool = False,
    num_cpus: int | None = None,
    num_gpus: float = 0.0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """``analyse_folder`` for jobs already found (``find_studies``); the same arguments."""
    from rich.progress import track

    from apps.nodule.detect import NoduleDetector

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if model_dir is not None and not Path(model_dir).is_dir():
        raise FileNotFoundError(f"no model folder {model_dir}")
    todo = [job for job in jobs if not job.reason]
    if use_ray and todo:
        done = _run_ray(todo, out, str(model_dir) if model_dir else None, num_cpus, num_gpus)
    else:
        detector = NoduleDetector.load(model_dir) if todo else None
        done = [
            _analyse_job(job, out, detector)
            for job in track(todo, description="nodule batch", disable=not progress or len(todo) < 2)
        ]
    by_index = {r["index"]: r for r in done}
    return [by_index.get(job.index) or _analyse_job(job, out, None) for job in jobs]


def summarise(records: list[dict[str, Any]], catalog: Catalog | None = None) -> dict[str, Any]:
    """Counts of a batch: studies, done, failed, skipped, nodules, and the files ``scan`` skipped."""
    status = [r["status"] for r in records]
    done = [r for r in records if r["status"] == "done"]
    return {
        "n_studies": len(records),
        "n_done": status.count("done"),
        "n_failed": status.count("failed"),
        "n_skipped": status.count("skipped"),
        "n_nodules": sum(len(r.get("nodules", [])) for r in done),
        "studies_with_nodules": sum(1 for r in done if r.get("nodules")),
        "analysis_seconds": round(sum(float(r.get("seconds", 0.0)) for r in done), 2),
        "skipped_files": [{"path": str(p), "reason": why} for p, why in (catalog.skipped if catalog else [])],
    }


def batch_command(
    root: Annotated[
        Path, typer.Argument(help="A folder of DICOM studies (searched recursively) or a DICOMDIR.")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Folder for the results: one sub-folder per series, batch.json.")
    ] = Path("nodule-batch"),
    use_ray: Annotated[
        bool, typer.Option("--ray", help="Run as a Ray Data pipeline (local Ray if none up).")
    ] = False,
    model: Annotated[
        Path | None,
        typer.Option("--model", help="Model folder (default: the shipped models/nodule-detector)."),
    ] = None,
    num_cpus: Annotated[
        int | None, typer.Option("--num-cpus", help="Ray: CPUs of the local runtime and most workers.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary and results as JSON.")] = False,
) -> None:
    """Find lung nodules in every CT study under ROOT; write SEG, SR and a report per study.

    Exits 1 when a study failed (all others are still analysed and written), 2 on bad arguments.
    """
    if out.exists() and not out.is_dir():
        _fail(f"--out {out} exists and is not a folder")
    if num_cpus is not None and num_cpus < 1:
        _fail(f"--num-cpus must be >= 1, got {num_cpus}")
    started = time.perf_counter()
    try:
        jobs, catalog = find_studies(root)
        records = run_jobs(
            jobs, out, model_dir=model, use_ray=use_ray, num_cpus=num_cpus, progress=not as_json
        )
    except (DicomError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc).splitlines()[0])
    summary = summarise(records, catalog)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    summary["engine"] = "ray" if use_ray else "local"
    result = {"root": str(root), "summary": summary, "results": records}
    out.mkdir(parents=True, exist_ok=True)
    (out / BATCH_JSON).write_text(json.dumps(result, indent=2) + "\n")
    if as_json:
        print(json.dumps(result))
    else:
        print(
            f"{summary['n_done']} of {summary['n_studies']} studies analysed ({summary['n_failed']} failed, "
            f"{summary['n_skipped']} without CT) in {summary['seconds']:.1f} s; "
            f"{summary['n_nodules']} nodule(s) in {summary['studies_with_nodules']} studies"
        )
        for r in records:
            if r["status"] != "done":
                print(f"  {r['status']}: {r['study']}: {r['error']}")
        if summary["skipped_files"]:
            print(f"  {len(summary['skipped_files'])} file(s) not read (see {BATCH_JSON})")
        print(f"results in {out} ({BATCH_JSON} lists every study)")
    if summary["n_failed"]:
        raise typer.Exit(code=1)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


__all__ = [
    "BATCH_JSON",
    "StudyJob",
    "analyse_folder",
    "batch_command",
    "find_studies",
    "run_jobs",
    "summarise",
]
