"""DICOMweb (QIDO-RS, WADO-RS, STOW-RS) against a real Orthanc with its DICOMweb plugin."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from apps.nodule.dicom_writer import write_series
from apps.nodule.phantoms import PhantomConfig, make_phantom
from connectors.dicom.dicomweb import DicomWebError, DicomWebStore
from connectors.dicom.reader import read_series
from tests.servers import free_port


@pytest.fixture
def web(orthanc) -> DicomWebStore:
    if orthanc.dicomweb_url is None:
        pytest.skip("needs the Orthanc DICOMweb plugin (apt-get install orthanc-dicomweb)")
    return DicomWebStore(orthanc.dicomweb_url, timeout=10)


@pytest.mark.integration
def test_stow_qido_wado(web: DicomWebStore, tmp_path: Path) -> None:
    files = write_series(make_phantom(PhantomConfig.tiny(), 201), tmp_path / "ct")
    head = pydicom.dcmread(files[0], stop_before_pixels=True)
    study, series = str(head.StudyInstanceUID), str(head.SeriesInstanceUID)

    stored = web.store(files)
    assert len(stored) == 32

    studies = web.search_studies(PatientID="PHANTOM-201")
    assert [str(s.StudyInstanceUID) for s in studies] == [study]
    found = web.search_series(study)
    assert [(str(s.SeriesInstanceUID), s.Modality) for s in found] == [(series, "CT")]

    paths = web.retrieve_series(study, series, tmp_path / "wado")
    assert len(paths) == 32
    volume = read_series(tmp_path / "wado")
    assert volume.series_uid == series and volume.hu.shape == (32, 64, 64)


@pytest.mark.integration
def test_http_errors_name_url_and_status(web: DicomWebStore, orthanc, tmp_path: Path) -> None:
    with pytest.raises(
        DicomWebError, match=r"HTTP 404 .* from http://127\.0\.0\.1:\d+/nothing/studies"
    ) as err:
        DicomWebStore(orthanc.url + "/nothing").search_studies()
    assert err.value.status == 404
    with pytest.raises(DicomWebError, match="WADO-RS retrieve of series 4.5.6 failed: HTTP 404") as err:
        web.retrieve_series("1.2.3", "4.5.6", tmp_path / "none")
    assert err.value.url.endswith("/studies/1.2.3/series/4.5.6")
    port = free_port()
    with pytest.raises(DicomWebError, match=f"cannot reach http://127.0.0.1:{port}/dicom-web") as err:
        DicomWebStore(f"http://127.0.0.1:{port}/dicom-web", timeout=3).search_series()
    assert err.value.status is None


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="must start with http"):
        DicomWebStore("127.0.0.1:8042/dicom-web")
    with pytest.raises(ValueError, match="nothing to store"):
        DicomWebStore("http://127.0.0.1:1/dicom-web").store([])
