"""POST /nodule/detect and GET /nodule/results: a tiny phantom study over HTTP with a tiny model."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient

from apps.api import create_api
from apps.nodule.detect import NoduleDetector
from apps.nodule.dicom_writer import write_phantom
from apps.nodule.model import NoduleModel, NoduleNetConfig
from tests.apps.nodule.conftest import tiny_config

KEY = "test-key"


@pytest.fixture(scope="session")
def tiny_detector_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny model that reports at confidence 0.01 (so the phantom gives nodules)."""
    cfg = NoduleNetConfig(**{**NoduleNetConfig.tiny().to_dict(), "report_threshold": 0.01})
    folder = tmp_path_factory.mktemp("nodule-model")
    NoduleModel.create(cfg).save(folder, name="test", metrics={}, summary="test")
    return folder


@pytest.fixture(scope="session")
def study_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The 32 slices of a tiny phantom's CT series."""
    from apps.nodule.phantoms import make_phantom

    folder = tmp_path_factory.mktemp("nodule-study")
    write_phantom(make_phantom(tiny_config(), seed=7), folder)
    return sorted((folder / "dicom").iterdir())


@pytest.fixture
def client(tiny_detector_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
    app = create_api(
        KEY,
        nodule_detector_factory=lambda: NoduleDetector.load(tiny_detector_dir, device="cpu"),
        nodule_results_dir=tmp_path / "results",
        max_body_bytes=4096,
    )
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        yield c


def _parts(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (p.name, p.read_bytes(), "application/dicom")) for p in paths]


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _error(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error", "detail"}
    assert "fathom-nodule-" not in body["detail"] and "/tmp" not in body["detail"]  # no server paths
    return body["detail"]


def test_uploaded_files_are_analysed_and_outputs_download(
    client: TestClient, study_files: list[Path]
) -> None:
    response = client.post("/nodule/detect", files=_parts(study_files))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {
        "id",
        "series_uid",
        "study_uid",
        "nodules",
        "outputs",
        "downloads",
        "notes",
        "seconds",
        "timings",
    }
    assert body["series_uid"] == str(pydicom.dcmread(study_files[0]).SeriesInstanceUID)
    assert body["nodules"] and set(body["nodules"][0]) == {
        "center_mm",
        "diameter_mm",
        "volume_mm3",
        "mean_hu",
        "confidence",
    }
    assert set(body["downloads"]) == {"seg", "sr", "report", "json"}
    assert all("/" not in name for name in body["outputs"].values())  # file names, not server paths

    seg = client.get(body["downloads"]["seg"])
    assert seg.status_code == 200 and seg.headers["content-type"] == "application/dicom"
    assert pydicom.dcmread(io.BytesIO(seg.content)).Modality == "SEG"
    sr = client.get(body["downloads"]["sr"])
    assert sr.headers["content-type"] == "application/dicom"
    assert pydicom.dcmread(io.BytesIO(sr.content)).Modality == "SR"
    report = client.get(body["downloads"]["report"])
    assert report.headers["content-type"].startswith("text/markdown")
    assert "Lung nodule analysis" in report.text and "attachment" in report.headers["content-disposition"]
    assert client.get(body["downloads"]["json"]).json() == body


def test_a_zip_with_folders_and_other_files_is_analysed(client: TestClient, study_files: list[Path]) -> None:
    members = {f"PAT1/CT/{p.name}": p.read_bytes() for p in study_files}
    members["README.txt"] = b"not DICOM: skipped"
    response = client.post("/nodule/detect", files={"files": ("study.zip", _zip(members), "application/zip")})
    assert response.status_code == 200, response.text
    assert response.json()["series_uid"] == str(pydicom.dcmread(study_files[0]).SeriesInstanceUID)


def test_no_file_is_a_400(client: TestClient) -> None:
    assert "no file uploaded" in _error(client.post("/nodule/detect"), 400)
    # What a browser form sends when no file was chosen: a part without a file name, not a file.
    empty = client.post("/nodule/detect", files={"files": ("", b"", "application/octet-stream")})
    assert "files" in _error(empty, 422)


def test_a_file_that_is_not_dicom_is_a_415_naming_it(client: TestClient, study_files: list[Path]) -> None:
    files = [*_parts(study_files[:2]), ("files", ("notes.txt", b"hello", "text/plain"))]
    detail = _error(client.post("/nodule/detect", files=files), 415)
    assert "'notes.txt'" in detail and "not a DICOM" in detail


def test_dicom_without_a_ct_series_is_a_422_with_the_reason(
    client: TestClient, study_files: list[Path]
) -> None:
    ds = pydicom.dcmread(study_files[0])
    ds.Modality = "MR"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    response = client.post(
        "/nodule/detect", files={"files": ("mr.dcm", buffer.getvalue(), "application/dicom")}
    )
    assert _error(response, 422) == (
        "the upload cannot be analysed: no CT series with at least 1 image(s); found: MR (1 images)"
    )


def test_unsafe_or_bad_zips_are_400s(client: TestClient, study_files: list[Path], tmp_path: Path) -> None:
    evil = _zip({"../../evil.dcm": study_files[0].read_bytes(), "ok.dcm": study_files[1].read_bytes()})
    detail = _error(client.post("/nodule/detect", files={"files": ("s.zip", evil, "application/zip")}), 400)
    assert "outside the archive" in detail
    absolute = _zip({"/etc/evil.dcm": b"x"})
    _error(client.post("/nodule/detect", files={"files": ("s.zip", absolute, "application/zip")}), 400)
    assert not list(tmp_path.rglob("evil.dcm"))
    bad = client.post("/nodule/detect", files={"files": ("s.zip", b"PK\x03\x04 garbage", "application/zip")})
    assert "not a valid zip" in _error(bad, 400)
    mixed = [
        ("files", ("s.zip", _zip({"a.dcm": study_files[0].read_bytes()}), "application/zip")),
        *_parts(study_files[:1]),
    ]
    assert "not both" in _error(client.post("/nodule/detect", files=mixed), 400)
    no_dicom = _zip({"a.txt": b"text"})
    _error(client.post("/nodule/detect", files={"files": ("s.zip", no_dicom, "application/zip")}), 415)


def test_unknown_results_are_404s_and_ids_are_validated(client: TestClient, study_files: list[Path]) -> None:
    assert "no result" in _error(client.get(f"/nodule/results/{'0' * 32}/report"), 404)
    assert client.get("/nodule/results/..%2F..%2Fetc/report").status_code in (404, 422)
    _error(client.get("/nodule/results/not-an-id/report"), 422)
    result_id = client.post("/nodule/detect", files=_parts(study_files)).json()["id"]
    assert "unknown output" in _error(client.get(f"/nodule/results/{result_id}/weights"), 404)


def test_other_routes_keep_the_small_body_limit(client: TestClient) -> None:
    big = {"question": "x" * 5000}
    assert client.post("/cs/ask", json=big).status_code == 413


def test_a_detector_that_fails_to_load_is_a_503(tmp_path: Path, study_files: list[Path]) -> None:
    def broken() -> NoduleDetector:
        raise FileNotFoundError("no model")

    app = create_api(None, nodule_detector_factory=broken, nodule_results_dir=tmp_path)
    with TestClient(app) as c:
        assert c.post("/nodule/detect", files=_parts(study_files[:1])).status_code == 503
        assert c.get("/healthz").json()["components"]["nodule.detector"]["error"] == "FileNotFoundError"


def test_the_openapi_schema_documents_the_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert paths["/nodule/detect"]["post"]["summary"] == "Find lung nodules in a CT study"
    assert "/nodule/results/{result_id}/{kind}" in paths
    assert json.dumps(paths["/nodule/detect"]).count("multipart/form-data") == 1


def test_too_many_files_or_members_are_413s(
    client: TestClient, study_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import apps.nodule.uploads as uploads

    monkeypatch.setattr(uploads, "MAX_FILES", 2)
    monkeypatch.setattr(uploads, "MAX_ZIP_MEMBERS", 2)
    assert "limit is 2" in _error(client.post("/nodule/detect", files=_parts(study_files[:3])), 413)
    archive = _zip({p.name: p.read_bytes() for p in study_files[:3]})
    response = client.post("/nodule/detect", files={"files": ("s.zip", archive, "application/zip")})
    assert "limit is 2" in _error(response, 413)
