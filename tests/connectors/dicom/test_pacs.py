"""DIMSE against a real Orthanc and our own storage SCP: echo, store, find, move, get, completion."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pydicom
import pytest

from apps.nodule.dicom_writer import write_series
from apps.nodule.phantoms import PhantomConfig, make_phantom
from connectors.dicom.pacs import PacsClient, PacsError, PacsNode, StoreError, safe_uid
from connectors.dicom.reader import read_series
from connectors.dicom.scp import StorageSCP
from tests.servers import free_port


def ct_series(folder: Path, seed: int) -> list[Path]:
    """A real 64x64x32 CT series; a new seed gives new UIDs (the Orthanc is shared by the run)."""
    return write_series(make_phantom(PhantomConfig.tiny(), seed), folder)


def uids(path: Path) -> tuple[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


class Collector:
    """An ``on_series`` callback that records its calls and lets a test wait for them."""

    def __init__(self) -> None:
        self.calls: list[tuple[Path, str, int]] = []
        self.event = threading.Event()

    def __call__(self, folder: Path, series_uid: str) -> None:
        self.calls.append((folder, series_uid, len(list(folder.glob("*.dcm")))))
        self.event.set()

    def wait(self, timeout: float = 20.0) -> None:
        assert self.event.wait(timeout), "on_series was not called"


def orthanc_client(orthanc) -> PacsClient:
    return PacsClient(PacsNode("127.0.0.1", orthanc.dicom_port, orthanc.aet), timeout=10)


def test_parse_node() -> None:
    assert PacsNode.parse("ORTHANC@pacs.local:4242") == PacsNode("pacs.local", 4242, "ORTHANC")
    assert PacsNode.parse("A B@[::1]:104") == PacsNode("::1", 104, "A B")
    assert str(PacsNode.parse("X@[::1]:104")) == "X@[::1]:104"
    with pytest.raises(ValueError, match="'@'"):
        PacsNode.parse("pacs:104")
    with pytest.raises(ValueError, match="port 'abc'"):
        PacsNode.parse("X@pacs:abc")
    with pytest.raises(ValueError, match="host or ':port'"):
        PacsNode.parse("X@pacs")
    with pytest.raises(ValueError, match="AE title 'WAY_TOO_LONG_AE_TITLE'"):
        PacsNode.parse("WAY_TOO_LONG_AE_TITLE@pacs:104")
    with pytest.raises(ValueError, match="1..65535"):
        PacsNode.parse("X@pacs:70000")


def test_safe_uid_keeps_uids_and_blocks_traversal() -> None:
    assert safe_uid("1.2.840.113619.2.55") == "1.2.840.113619.2.55"
    assert safe_uid("..") == "_"
    assert "/" not in safe_uid("1.2/../../etc")


def test_bad_peer_names_it(tmp_path: Path) -> None:
    port = free_port()
    with pytest.raises(PacsError, match=rf"X@127\.0\.0\.1:{port}: cannot connect"):
        PacsClient(f"X@127.0.0.1:{port}", timeout=3).echo()
    with StorageSCP(tmp_path, ae_title="FATHOM") as scp:
        with pytest.raises(PacsError, match="WRONG@.*rejected.*Called AE title not recognised"):
            PacsClient(f"WRONG@127.0.0.1:{scp.port}", timeout=3).echo()
        PacsClient(scp.node, timeout=3).echo()


@pytest.mark.integration
def test_echo_store_find(orthanc, tmp_path: Path) -> None:
    files = ct_series(tmp_path / "ct", seed=101)
    study, series = uids(files[0])
    client = orthanc_client(orthanc)
    client.echo()
    result = client.store(files)
    assert len(result.stored) == 32 and not result.failed
    studies = client.find_studies(PatientID="PHANTOM-101")
    assert [str(s.StudyInstanceUID) for s in studies] == [study]
    found = client.find_series(study)
    assert [str(s.SeriesInstanceUID) for s in found] == [series]
    assert found[0].Modality == "CT" and int(found[0].NumberOfSeriesRelatedInstances) == 32
    assert series in {str(s.SeriesInstanceUID) for s in client.find_series(Modality="CT")}
    with pytest.raises(ValueError, match="NotAKeyword"):
        client.find_studies(NotAKeyword="x")


@pytest.mark.integration
def test_move_series_to_scp_completes_once(orthanc, tmp_path: Path) -> None:
    files = ct_series(tmp_path / "ct", seed=102)
    study, series = uids(files[0])
    client = orthanc_client(orthanc)
    client.store(files)
    got = Collector()
    with StorageSCP(tmp_path / "in", got, ae_title="MOVEDEST", settle_seconds=0.3) as scp:
        orthanc.add_modality("movedest", "MOVEDEST", scp.port)
        result = client.move_series(study, series, "MOVEDEST")
        assert (result.completed, result.failed) == (32, 0)
        got.wait()
        assert scp.wait_idle(5)
    folder = tmp_path / "in" / study / series
    assert got.calls == [(folder, series, 32)]
    assert read_series(folder).hu.shape == (32, 64, 64)
    with pytest.raises(PacsError, match="C-MOVE of series .* to NOBODY failed"):
        client.move_series(study, series, "NOBODY")


@pytest.mark.integration
def test_get_series(orthanc, tmp_path: Path) -> None:
    files = ct_series(tmp_path / "ct", seed=103)
    study, series = uids(files[0])
    client = orthanc_client(orthanc)
    client.store(files)
    result = client.get_series(study, series, tmp_path / "got")
    assert result.completed == 32 and len(result.files) == 32
    assert read_series(tmp_path / "got").series_uid == series


def test_scp_waits_for_all_associations_and_overwrites_duplicates(tmp_path: Path) -> None:
    files = ct_series(tmp_path / "ct", seed=104)
    study, series = uids(files[0])
    got = Collector()
    with StorageSCP(tmp_path / "in", got, settle_seconds=0.5) as scp:
        client = PacsClient(scp.node, timeout=5)
        for part in (files[:16], files[16:], files[:5]):  # three associations, the last resends five
            client.store(part)
        assert not got.calls and scp.pending() == {series: 32}
        got.wait()
        assert scp.wait_idle(5)
    folder = tmp_path / "in" / study / series
    assert got.calls == [(folder, series, 32)]
    assert not list(folder.glob(".*.part"))


def test_scp_survives_failing_callback(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first, second = ct_series(tmp_path / "a", seed=105), ct_series(tmp_path / "b", seed=106)
    calls: list[str] = []

    def on_series(folder: Path, series_uid: str) -> None:
        calls.append(series_uid)
        if len(calls) == 1:
            raise RuntimeError("analysis exploded")

    with (
        caplog.at_level(logging.ERROR, logger="connectors.dicom.pacs"),
        StorageSCP(tmp_path / "in", on_series, settle_seconds=0.1) as scp,
    ):
        client = PacsClient(scp.node, timeout=5)
        client.store(first)
        assert scp.wait_idle(10)
        client.store(second)
        assert scp.wait_idle(10)
    assert calls == [uids(first[0])[1], uids(second[0])[1]]
    assert f"on_series failed for series {calls[0]}" in caplog.text


def test_store_names_refused_instances(tmp_path: Path) -> None:
    files = ct_series(tmp_path / "ct", seed=107)[:2]
    bad = pydicom.dcmread(files[1])
    del bad.SeriesInstanceUID  # our SCP refuses instances it cannot file
    with StorageSCP(tmp_path / "in", settle_seconds=0.1) as scp:
        with pytest.raises(StoreError, match=f"1 of 2 instances not stored.*{bad.SOPInstanceUID}") as err:
            PacsClient(scp.node, timeout=5).store([files[0], bad])
        assert scp.wait_idle(5)
    assert err.value.result.stored == [str(pydicom.dcmread(files[0]).SOPInstanceUID)]
    assert "0xA900" in err.value.result.failed[str(bad.SOPInstanceUID)]


def test_scp_bad_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="settle_seconds"):
        StorageSCP(tmp_path, settle_seconds=-1)
    with pytest.raises(ValueError, match="AE title"):
        StorageSCP(tmp_path, ae_title="")
    with (
        StorageSCP(tmp_path) as scp,
        pytest.raises(PacsError, match=f"cannot listen on 127.0.0.1:{scp.port}"),
    ):
        StorageSCP(tmp_path / "other", port=scp.port).start()
