"""``fathom nodule listen``: the PACS worker end to end against a real Orthanc, and its failure paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import typer
from typer.testing import CliRunner

from apps.nodule.dicom_writer import write_series
from apps.nodule.listen import PacsWorker, listen_command
from apps.nodule.phantoms import PhantomConfig, make_phantom
from connectors.dicom.dicomweb import DicomWebStore
from connectors.dicom.pacs import PacsClient, PacsNode
from connectors.dicom.reader import read_series
from connectors.dicom.results import Nodule, write_seg, write_sr
from tests.servers import free_port


def ct_series(folder: Path, seed: int) -> tuple[list[Path], str, str]:
    """A real CT series (new UIDs per seed: the Orthanc is shared) and its study and series UIDs."""
    files = write_series(make_phantom(PhantomConfig.tiny(), seed), folder)
    head = pydicom.dcmread(files[0], stop_before_pixels=True)
    return files, str(head.StudyInstanceUID), str(head.SeriesInstanceUID)


def one_nodule_analysis(folder: Path, out_dir: Path) -> dict:
    """An ``analyse`` stand-in: one 7x7x3-voxel nodule at the volume centre, as a real SEG + SR."""
    files = sorted(folder.glob("*.dcm"))
    volume = read_series(files)
    source = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    labels = np.zeros(volume.hu.shape, np.uint8)  # (Z, Y, X)
    k, j, i = (n // 2 for n in labels.shape)
    labels[k - 1 : k + 2, j - 3 : j + 4, i - 3 : i + 4] = 1
    center = volume.voxel_to_patient(np.array([k, j, i], dtype=float))
    nodule = Nodule(1, tuple(float(v) for v in center), 7.0, 180.0, float(volume.hu[k, j, i]), 0.9)
    out_dir.mkdir(parents=True, exist_ok=True)
    seg = write_seg(source, labels, [nodule], out_dir / "seg.dcm")
    sr = write_sr(source, [nodule], out_dir / "sr.dcm", seg=pydicom.dcmread(seg))
    report = out_dir / "report.json"
    report.write_text(json.dumps({"nodules": 1}))
    nodules = [{"label": 1, "center_mm": list(nodule.center_mm), "diameter_mm": 7.0}]
    return {
        "series_uid": volume.series_uid,
        "nodules": nodules,
        "outputs": {"seg": seg, "sr": sr, "report": report},
    }


def referenced_series(ds: pydicom.Dataset) -> set[str]:
    """Series UIDs a SEG (ReferencedSeriesSequence) or SR (evidence sequences) refers to."""
    found = {str(s.SeriesInstanceUID) for s in ds.get("ReferencedSeriesSequence", [])}
    for name in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in ds.get(name, []):
            found |= {str(s.SeriesInstanceUID) for s in study.get("ReferencedSeriesSequence", [])}
    return found


@pytest.mark.integration
def test_listen_dimse_end_to_end(orthanc, tmp_path: Path) -> None:
    files, study, series = ct_series(tmp_path / "ct", seed=301)
    pacs = PacsClient(PacsNode("127.0.0.1", orthanc.dicom_port, orthanc.aet), timeout=10)
    pacs.store(files)
    worker = PacsWorker(
        tmp_path / "work", analyse=one_nodule_analysis, pacs=pacs.peer, ae_title="FATHOMLSN", port=0,
        settle_seconds=0.3,
    )  # fmt: skip
    with worker:
        orthanc.add_modality("fathomlsn", "FATHOMLSN", worker.scp.port)
        pacs.move_series(study, series, "FATHOMLSN")
        records = worker.run(once=True, timeout=60)
    assert [r["status"] for r in records] == ["done"], records
    assert records[0]["series_uid"] == series and records[0]["nodules"] == 1 and len(records[0]["sent"]) == 2
    assert [
        json.loads(line) for line in (tmp_path / "work" / "ledger.jsonl").read_text().splitlines()
    ] == records

    by_modality = {str(s.Modality): str(s.SeriesInstanceUID) for s in pacs.find_series(study)}
    assert set(by_modality) == {"CT", "SEG", "SR"}
    for modality in ("SEG", "SR"):
        got = pacs.get_series(study, by_modality[modality], tmp_path / modality)
        (path,) = got.files
        ds = pydicom.dcmread(path)
        assert ds.Modality == modality and str(ds.StudyInstanceUID) == study
        assert series in referenced_series(ds)


@pytest.mark.integration
def test_listen_dicomweb_results(orthanc, tmp_path: Path) -> None:
    if orthanc.dicomweb_url is None:
        pytest.skip("needs the Orthanc DICOMweb plugin (apt-get install orthanc-dicomweb)")
    files, study, series = ct_series(tmp_path / "ct", seed=302)
    worker = PacsWorker(
        tmp_path / "work",
        analyse=one_nodule_analysis,
        dicomweb=orthanc.dicomweb_url,
        port=0,
        settle_seconds=0.2,
    )
    with worker:
        PacsClient(worker.scp.node, timeout=10).store(files)  # a modality pushing straight to us
        records = worker.run(once=True, timeout=60)
    assert [r["status"] for r in records] == ["done"], records
    web = DicomWebStore(orthanc.dicomweb_url)
    assert {str(s.Modality) for s in web.search_series(study)} == {"SEG", "SR"}


def test_listen_skips_non_ct_and_records_failures(tmp_path: Path) -> None:
    files, _, series = ct_series(tmp_path / "ct", seed=303)
    made = one_nodule_analysis(tmp_path / "ct", tmp_path / "made")
    closed = f"PACS@127.0.0.1:{free_port()}"
    worker = PacsWorker(
        tmp_path / "work", analyse=one_nodule_analysis, pacs=closed, port=0, settle_seconds=0.1
    )
    with worker:
        client = PacsClient(worker.scp.node, timeout=10)
        client.store([made["outputs"]["seg"], made["outputs"]["sr"]])  # our own results coming back
        assert worker.scp.wait_idle(20)
        client.store(files)
        records = worker.run(once=True, timeout=60)
    skipped = sorted(r["reason"] for r in records if r["status"] == "skipped")
    assert skipped == ["modality SEG", "modality SR"]
    (failed,) = [r for r in records if r["status"] == "failed"]
    assert failed["series_uid"] == series and failed["stage"] == "send"
    assert closed in failed["error"] and "cannot connect" in failed["error"]
    assert Path(failed["outputs"]["seg"]).is_file()  # results kept for a retry

    def broken(folder: Path, out_dir: Path) -> dict:
        raise RuntimeError("model exploded")

    with PacsWorker(tmp_path / "work2", analyse=broken, port=0, settle_seconds=0.1) as worker:
        PacsClient(worker.scp.node, timeout=10).store(files)
        (record,) = worker.run(once=True, timeout=60)
    assert record["status"] == "failed" and record["stage"] == "analyse"
    assert record["error"] == "RuntimeError: model exploded"


def test_listen_command_bad_input(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(listen_command)
    runner = CliRunner()
    result = runner.invoke(app, ["--pacs", "pacs:104", "--work", str(tmp_path)])
    assert result.exit_code == 2 and "'@'" in result.output
    result = runner.invoke(app, ["--pacs", "A@h:1", "--dicomweb", "http://h/dw", "--work", str(tmp_path)])
    assert result.exit_code == 2 and "not both" in result.output
    result = runner.invoke(app, ["--settle", "-1", "--work", str(tmp_path)])
    assert result.exit_code == 2 and "--settle" in result.output
    with PacsWorker(tmp_path / "busy", analyse=one_nodule_analysis, port=0) as busy:
        result = runner.invoke(app, ["--port", str(busy.scp.port), "--work", str(tmp_path)])
    assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{busy.scp.port}" in result.output


@pytest.mark.integration
def test_listen_command_runs_the_detector_end_to_end(orthanc, tmp_path: Path) -> None:
    """``fathom nodule listen --once``: Orthanc C-MOVEs a CT series to it, the real pipeline runs
    (an untrained tiny model that reports every candidate), SEG and SR go back to Orthanc."""
    import dataclasses
    import socket
    import threading
    import time

    from apps.nodule.model import NoduleModel, NoduleNetConfig

    model_dir = tmp_path / "model"
    config = dataclasses.replace(NoduleNetConfig.tiny(), report_threshold=0.01, prob_threshold=0.45)
    NoduleModel.create(config, seed=1).save(model_dir, name="test-tiny", metrics={}, summary="test")
    files, study, series = ct_series(tmp_path / "ct", seed=304)
    pacs = PacsClient(PacsNode("127.0.0.1", orthanc.dicom_port, orthanc.aet), timeout=10)
    pacs.store(files)
    port = free_port()
    app = typer.Typer()
    app.command()(listen_command)
    peer = f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
    args = ["--ae-title", "FATHOMCLI", "--port", str(port), "--pacs", peer, "--work", str(tmp_path / "work"),
            "--model", str(model_dir), "--settle", "0.3", "--once"]  # fmt: skip
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(result=CliRunner().invoke(app, args)))
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    orthanc.add_modality("fathomcli", "FATHOMCLI", port)
    pacs.move_series(study, series, "FATHOMCLI")
    thread.join(timeout=120)
    assert not thread.is_alive(), "listen --once did not finish"
    result = outcome["result"]
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in (tmp_path / "work" / "ledger.jsonl").read_text().splitlines()]
    assert record["status"] == "done" and record["series_uid"] == series and record["nodules"] >= 1
    by_modality = {str(s.Modality): str(s.SeriesInstanceUID) for s in pacs.find_series(study)}
    assert set(by_modality) == {"CT", "SEG", "SR"}
    seg = pydicom.dcmread(pacs.get_series(study, by_modality["SEG"], tmp_path / "seg").files[0])
    assert series in referenced_series(seg) and len(seg.SegmentSequence) == record["nodules"]
