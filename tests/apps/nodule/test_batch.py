"""``apps.nodule.batch``: a folder of tiny phantom studies, in-process and on Ray Data (local runtime)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from apps.nodule.batch import analyse_folder, batch_command, find_studies, summarise
from apps.nodule.dicom_writer import write_series
from apps.nodule.model import NoduleModel, NoduleNetConfig
from apps.nodule.phantoms import PhantomConfig, make_phantom

N_GOOD = 3


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``N_GOOD`` tiny phantom studies, one broken (a middle slice missing), one non-DICOM file."""
    root = tmp_path_factory.mktemp("studies")
    config = dataclasses.replace(PhantomConfig.tiny(), use_lidc=False)
    for seed in range(N_GOOD + 1):
        write_series(make_phantom(config, seed), root / f"study_{seed}" / "ct")
    files = sorted((root / f"study_{N_GOOD}" / "ct").glob("*.dcm"))
    files[len(files) // 2].unlink()  # uneven slice spacing: read_series refuses the series
    (root / "notes.txt").write_text("not DICOM")
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model")
    NoduleModel.create(NoduleNetConfig.tiny()).save(out, name="t", metrics={}, summary="")
    return out


@pytest.fixture(scope="module")
def local_records(studies: Path, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    torch.set_num_threads(1)
    return analyse_folder(studies, tmp_path_factory.mktemp("local"), model_dir=model_dir, progress=False)


def _comparable(record: dict) -> dict:
    """A record without what depends on the run (timings, output folder)."""
    return {k: v for k, v in record.items() if k not in ("seconds", "timings", "outputs")}


def test_find_studies_one_job_per_study(studies: Path) -> None:
    jobs, catalog = find_studies(studies)
    assert len(jobs) == N_GOOD + 1
    assert all(job.files and job.series_uid and not job.reason for job in jobs)
    assert {Path(job.study).parent.name for job in jobs} == {f"study_{i}" for i in range(N_GOOD + 1)}
    assert [p.name for p, _ in catalog.skipped] == ["notes.txt"]


def test_broken_study_is_reported_and_the_others_analysed(local_records: list[dict], studies: Path) -> None:
    assert len(local_records) == N_GOOD + 1
    by_study = {Path(r["study"]).parent.name: r for r in local_records}
    broken = by_study.pop(f"study_{N_GOOD}")
    assert broken["status"] == "failed" and "DicomError" in broken["error"]
    for record in by_study.values():
        assert record["status"] == "done", record
        assert Path(record["outputs"]["json"]).is_file() and Path(record["outputs"]["sr"]).is_file()
        assert json.loads(Path(record["outputs"]["json"]).read_text())["series_uid"] == record["series_uid"]
    summary = summarise(local_records)
    assert (summary["n_studies"], summary["n_done"], summary["n_failed"]) == (N_GOOD + 1, N_GOOD, 1)


@pytest.mark.slow
def test_ray_matches_in_process(
    local_records: list[dict], studies: Path, model_dir: Path, tmp_path: Path
) -> None:
    ray = pytest.importorskip("ray")
    started = time.perf_counter()
    ours = not ray.is_initialized()  # another test may have started Ray already: reuse it, leave it up
    if ours:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        ray_records = analyse_folder(studies, tmp_path / "ray", model_dir=model_dir, use_ray=True, num_cpus=2)
    finally:
        if ours:
            ray.shutdown()
    print(f"ray: {len(ray_records)} studies in {time.perf_counter() - started:.1f} s (with ray.init)")
    assert [_comparable(r) for r in ray_records] == [_comparable(r) for r in local_records]
    done = [r for r in ray_records if r["status"] == "done"]
    assert len(done) == N_GOOD and all(str(tmp_path / "ray") in r["outputs"]["json"] for r in done)


def test_cli_writes_batch_json_and_exits_1_on_a_failure(
    studies: Path, model_dir: Path, tmp_path: Path
) -> None:
    import typer

    app = typer.Typer()
    app.command()(batch_command)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [str(studies), "--out", str(out), "--model", str(model_dir), "--json"])
    assert result.exit_code == 1, result.output
    written = json.loads((out / "batch.json").read_text())
    assert written["summary"]["n_done"] == N_GOOD and written["summary"]["n_failed"] == 1
    assert written["summary"]["skipped_files"][0]["path"].endswith("notes.txt")
    assert json.loads(result.stdout)["summary"] == written["summary"]
    bad = CliRunner().invoke(app, [str(tmp_path / "absent"), "--out", str(out)])
    assert bad.exit_code == 2 and "no such file or folder" in bad.output
