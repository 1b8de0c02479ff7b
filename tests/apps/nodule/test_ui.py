"""The lung-nodule viewer page with Streamlit's AppTest: a tiny sample study, a tiny model."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from apps.nodule import ui
from apps.nodule.detect import NoduleDetector
from apps.nodule.model import NoduleModel, NoduleNetConfig
from apps.nodule.phantoms import PhantomConfig
from apps.ui import main_path


@pytest.fixture(scope="session")
def tiny_detector() -> Iterator[NoduleDetector]:
    import tempfile

    cfg = NoduleNetConfig(**{**NoduleNetConfig.tiny().to_dict(), "report_threshold": 0.01})
    with tempfile.TemporaryDirectory() as folder:
        NoduleModel.create(cfg).save(folder, name="test", metrics={}, summary="test")
        yield NoduleDetector.load(folder, device="cpu")


@pytest.fixture
def page_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_detector: NoduleDetector) -> Path:
    """A fresh cache folder, the tiny detector, and tiny (parametric) sample phantoms."""
    monkeypatch.setenv("FATHOM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(ui, "detector_factory", lambda: tiny_detector)
    monkeypatch.setattr(ui, "SAMPLE_SIZES", ("tiny",))
    tiny = dataclasses.replace(PhantomConfig.tiny(), use_lidc=False)
    monkeypatch.setattr(PhantomConfig, "named", classmethod(lambda cls, size: tiny))
    ui.reset_detector()
    yield tmp_path
    ui.reset_detector()


def _page() -> None:
    from apps.nodule import ui

    ui.render()


def _button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def test_make_a_sample_analyse_it_and_see_the_nodules(page_env: Path) -> None:
    at = AppTest.from_function(_page, default_timeout=60).run()
    assert not at.exception and at.title[0].value == "Lung nodules"
    assert at.text_input(key="nodule_folder").value == ""
    at = _button(at, "Make a sample phantom study").click().run()
    assert not at.exception
    assert at.text_input(key="nodule_folder").value == str(page_env / "nodule" / "sample" / "dicom")

    at = _button(at, "Analyse").click().run()
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert len(table) >= 1 and list(table["#"]) == list(range(1, len(table) + 1))
    assert at.subheader[0].value == f"{len(table)} nodule(s) found"
    captions = [caption for image in at.image for caption in image.captions]
    assert [c.split()[0] for c in captions] == ["Axial", "Coronal", "Sagittal"]
    assert [at.slider(key=f"nodule_slice_{v}").max for v in ("axial", "coronal", "sagittal")] == [31, 63, 63]
    assert {b.label for b in at.get("download_button")} == {
        "Download DICOM SEG",
        "Download DICOM SR",
        "Download Report",
    }

    # Jumping to the last nodule puts the axial slider on its centre slice.
    last = len(table)
    at = at.selectbox(key="nodule_jump").set_value(last).run()
    assert at.slider(key="nodule_slice_axial").value == int(table["slice (axial)"].iloc[-1])
    at = at.radio(key="nodule_window").set_value("Mediastinum").run()
    assert not at.exception and len(at.image) == 3
    assert _button(at, "Analyse again")  # the analysis is kept for this study


def test_a_missing_folder_is_named(page_env: Path) -> None:
    at = AppTest.from_function(_page, default_timeout=60).run()
    at = at.text_input(key="nodule_folder").set_value(str(page_env / "nowhere")).run()
    assert at.error[0].value.startswith("No such folder or file")


def test_a_folder_without_ct_says_why(page_env: Path) -> None:
    (page_env / "empty").mkdir()
    (page_env / "empty" / "notes.txt").write_text("not DICOM")
    at = AppTest.from_function(_page, default_timeout=60).run()
    at = at.text_input(key="nodule_folder").set_value(str(page_env / "empty")).run()
    at = _button(at, "Analyse").click().run()
    assert not at.exception
    assert (
        at.error[0].value.startswith("The study cannot be analysed:") and "no CT series" in at.error[0].value
    )


def test_slices_are_windowed_coloured_and_square() -> None:
    hu = np.full((4, 6), -2000.0)  # below the lung window: black
    hu[0, 0] = 1000.0
    labels = np.zeros((4, 6), np.uint16)
    labels[2, 3] = 1
    image = ui.slice_image(hu, labels, ui.WINDOWS["Lung"], row_mm=2.0, col_mm=1.0)
    assert image.shape == (8, 6, 3) and image.dtype == np.uint8
    plain = ui.slice_image(hu, labels * 0, ui.WINDOWS["Lung"], row_mm=1.0, col_mm=1.0)
    assert plain[0, 0].tolist() == [255, 255, 255] and plain[1, 1].tolist() == [0, 0, 0]
    coloured = ui.slice_image(hu, labels, ui.WINDOWS["Lung"], row_mm=1.0, col_mm=1.0)
    assert coloured[2, 3].tolist() != plain[2, 3].tolist() and len(set(coloured[2, 3].tolist())) > 1


def test_the_home_page_mentions_the_nodule_model(page_env: Path) -> None:
    home = AppTest.from_file(str(main_path()), default_timeout=30).run()
    assert not home.exception
    lines = [e.value for e in [*home.info, *home.success]]
    assert any(line.startswith("Nodule detector:") for line in lines)
    ui.load_detector()
    home = AppTest.from_file(str(main_path()), default_timeout=30).run()
    assert any(s.value.startswith("Nodule detector: loaded, model test") for s in home.success)


class _Uploaded(io.BytesIO):
    """What ``st.file_uploader`` hands the page: a BytesIO with a name and a size."""

    def __init__(self, name: str, data: bytes) -> None:
        super().__init__(data)
        self.name, self.size = name, len(data)


def test_uploaded_files_are_stored_like_the_api_stores_them(tmp_path: Path) -> None:
    from apps.nodule.dicom_writer import write_phantom
    from apps.nodule.phantoms import make_phantom
    from apps.nodule.uploads import UploadError

    write_phantom(
        make_phantom(dataclasses.replace(PhantomConfig.tiny(), use_lidc=False), seed=3), tmp_path / "s"
    )
    slices = sorted((tmp_path / "s" / "dicom").iterdir())[:2]
    files = [_Uploaded(p.name, p.read_bytes()) for p in slices]
    files[0].read()  # a rerun may hand over files already read: they are rewound
    folder = ui.save_uploaded(files, tmp_path / "upload")
    assert sorted(p.read_bytes() for p in folder.iterdir()) == sorted(p.read_bytes() for p in slices)
    assert ui.uploads_key(files) == ui.uploads_key(files) != ui.uploads_key(files[:1])
    with pytest.raises(UploadError, match="'notes.txt' is not a DICOM"):
        ui.save_uploaded([_Uploaded("notes.txt", b"hello")], tmp_path / "upload")
