"""The lung-nodule viewer page (Streamlit): pick or upload a CT study, find its nodules, look at them.

A study comes from a folder on the server (default: the sample phantom study in the cache folder,
which a button writes when it is missing) or from uploaded DICOM files or one ``.zip``. "Analyse"
runs ``apps.nodule.pipeline.analyse``; each browser session keeps its latest analyses in
``st.session_state`` (keyed by study), so moving a slider does not analyse again. The page shows
axial, coronal and sagittal slices with the nodules coloured over them (lung or mediastinal
window), the nodule table with a jump to each nodule's centre, download buttons for the DICOM SEG,
SR and the report, and the analysis notes.

The detector is loaded once per process (``st.cache_resource``) by ``detector_factory``, which a
test or a deployment can replace (then ``reset_detector()``). The model is ``$FATHOM_NODULE_MODEL``,
else the shipped ``models/nodule-detector``. Torch loads only with the detector.

Run alone with ``streamlit run apps/nodule/ui.py``, or as a page of ``apps/ui/app.py``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import streamlit as st

from core.config import cache_dir, models_dir

if TYPE_CHECKING:
    from apps.nodule.detect import NoduleDetector
    from apps.nodule.pipeline import Analysis

MODEL_ENV = "FATHOM_NODULE_MODEL"
MODEL_NAME = "nodule-detector"  # apps.nodule.model.DEFAULT_MODEL, without importing torch here
SAMPLE_SIZES = ("small", "medium")  # phantom sizes offered for the sample study
SAMPLE_SEED = 11
KEEP_ANALYSES = 2  # per browser session: each holds its CT volume in memory
WINDOWS = {"Lung": (-600.0, 1500.0), "Mediastinum": (40.0, 400.0)}  # (level, width) HU
VIEWS = ("Axial", "Coronal", "Sagittal")
# Nodule i is drawn in COLOURS[i % len]: distinct on grey, colour-blind friendly (Okabe-Ito).
COLOURS = np.array(
    [[230, 159, 0], [86, 180, 233], [0, 158, 115], [240, 228, 66], [213, 94, 0], [204, 121, 167]], np.float32
)
ANALYSES_KEY = "nodule_analyses"
SHOWN_KEY = "nodule_shown"

_log = logging.getLogger(__name__)


# --- model and data (no widgets) -------------------------------------------------------------------------
def default_detector() -> NoduleDetector:
    """The detector of ``$FATHOM_NODULE_MODEL``, else of the shipped model."""
    from apps.nodule.detect import NoduleDetector

    return NoduleDetector.load(os.environ.get(MODEL_ENV, "").strip() or None)


# What ``load_detector`` builds; replace it (then call ``reset_detector()``) to use another model.
detector_factory: Callable[[], Any] = default_detector
# What has been loaded in this process, for the home page: {"model": ...} once the detector is built.
_loaded: dict[str, str] = {}


def model_available() -> bool:
    """Whether the default detector has a model to load (``$FATHOM_NODULE_MODEL`` or the shipped one)."""
    return bool(os.environ.get(MODEL_ENV, "").strip()) or models_dir(MODEL_NAME).is_dir()


@st.cache_resource(show_spinner="Loading the nodule detector...")
def load_detector() -> Any:
    """The detector ``detector_factory`` builds, once per process (a failed build is retried)."""
    _loaded.clear()
    detector = detector_factory()
    card = getattr(getattr(detector, "model", None), "card", {}) or {}
    _loaded["model"] = f"{card.get('name', 'nodule model')} ({card.get('code_version', 'dev')})"
    return detector


def reset_detector() -> None:
    """Drop the cached detector: the next page run builds a fresh one."""
    load_detector.clear()
    _loaded.clear()


def loaded_info() -> dict[str, str]:
    """``{"model": ...}`` once this process has built the detector; empty before."""
    return dict(_loaded)


def sample_dir() -> Path:
    """Where the sample phantom study lives: ``<cache>/nodule/sample`` (its series under ``dicom/``)."""
    return cache_dir("nodule", "sample")


def make_sample(size: str, folder: Path | None = None, seed: int = SAMPLE_SEED) -> Path:
    """Write a phantom chest CT study of ``size`` (``PhantomConfig.named``); its DICOM folder.

    Raises:
        ValueError: an unknown size.
    """
    from apps.nodule.dicom_writer import write_phantom
    from apps.nodule.phantoms import PhantomConfig, make_phantom

    folder = folder or sample_dir()
    if folder.exists():
        shutil.rmtree(folder)
    write_phantom(make_phantom(PhantomConfig.named(size), seed=seed), folder)
    return folder / "dicom"


def default_study() -> str:
    """The sample study's DICOM folder when it exists, else an empty string."""
    folder = sample_dir() / "dicom"
    return str(folder) if folder.is_dir() else ""


def uploads_key(files: list[Any]) -> str:
    """A key for a set of uploaded files (names, sizes and contents)."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.name}\0{f.size}\0".encode())
        digest.update(f.getvalue())
    return digest.hexdigest()[:24]


def save_uploaded(files: list[Any], dest: Path) -> Path:
    """Store Streamlit uploads (DICOM files or one zip) in ``dest`` like the API does; the folder.

    Raises:
        apps.nodule.api.UploadError: no file, not DICOM, a bad or unsafe zip (its ``detail`` says why).
    """
    from apps.nodule.uploads import save_uploads

    if dest.exists():
        shutil.rmtree(dest)
    wrapped = [SimpleNamespace(filename=f.name, size=f.size, file=f) for f in files]
    for f in files:
        f.seek(0)
    save_uploads(wrapped, dest)  # type: ignore[arg-type]
    return dest


def apply_window(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """HU mapped to grey levels 0-255 by a window (``level`` centre, ``width`` range)."""
    low = level - width / 2
    return (np.clip((hu - low) / width, 0.0, 1.0) * 255.0).astype(np.uint8)


def slice_image(
    hu: np.ndarray,
    labels: np.ndarray,
    window: tuple[float, float],
    row_mm: float,
    col_mm: float,
    *,
    alpha: float = 0.45,
) -> np.ndarray:
    """One view as an RGB image: windowed CT with the nodules coloured, square pixels.

    Args:
        hu: ``(rows, cols)`` HU.
        labels: ``(rows, cols)`` nodule labels (0: none, ``i + 1``: nodule ``i``).
        window: ``(level, width)`` HU.
        row_mm: Spacing between rows, mm; ``col_mm``: between columns. Rows are stretched to match.
        alpha: Opacity of the nodule colour.

    Returns:
        ``(rows', cols, 3)`` uint8, ``rows' = rows * row_mm / col_mm`` rounded.
    """
    from PIL import Image

    grey = apply_window(hu, *window).astype(np.float32)
    rgb = np.repeat(grey[..., None], 3, axis=-1)  # (rows, cols, 3)
    inside = labels > 0
    if inside.any():
        colour = COLOURS[(labels[inside].astype(np.int64) - 1) % len(COLOURS)]
        rgb[inside] = (1 - alpha) * rgb[inside] + alpha * colour
    image = Image.fromarray(rgb.round().astype(np.uint8))
    height = max(1, round(hu.shape[0] * row_mm / col_mm))
    if height != hu.shape[0]:
        image = image.resize((hu.shape[1], height), Image.Resampling.BILINEAR)
    return np.asarray(image)


def view_image(analysis: Analysis, view: str, index: int, window: tuple[float, float]) -> np.ndarray:
    """Slice ``index`` of ``view`` (axial: ``k``, coronal: ``j``, sagittal: ``i``); head up in the others."""
    hu, labels = analysis.volume.hu, analysis.detection.labels  # (Z, Y, X)
    dz, dy, dx = analysis.volume.spacing
    if view == "Axial":
        return slice_image(hu[index], labels[index], window, dy, dx)
    if view == "Coronal":  # rows: z from the top of the volume down
        return slice_image(hu[::-1, index, :], labels[::-1, index, :], window, dz, dx)
    return slice_image(hu[::-1, :, index], labels[::-1, :, index], window, dz, dy)


def nodule_table(analysis: Analysis) -> pd.DataFrame:
    """One row per reported nodule, most confident first."""
    rows = []
    for n, c in enumerate(analysis.detection.nodules, 1):
        x, y, z = c.center_mm
        k, j, i = (int(round(v)) for v in c.center_voxel)
        rows.append(
            {
                "#": n,
                "x (mm)": round(x, 1),
                "y (mm)": round(y, 1),
                "z (mm)": round(z, 1),
                "slice (axial)": k,
                "diameter (mm)": round(c.diameter_mm, 1),
                "volume (mm³)": round(c.volume_mm3),
                "mean HU": round(c.mean_hu),
                "confidence": round(c.confidence, 3),
            }
        )
    columns = [
        "#",
        "x (mm)",
        "y (mm)",
        "z (mm)",
        "slice (axial)",
        "diameter (mm)",
        "volume (mm³)",
        "mean HU",
        "confidence",
    ]
    return pd.DataFrame(rows, columns=columns)


# --- the page ----------------------------------------------------------------------------------------------
def _slider_key(view: str) -> str:
    return f"nodule_slice_{view.lower()}"


def _centre_on(analysis: Analysis, voxel: tuple[float, float, float] | None) -> None:
    """Put the three sliders on ``voxel`` (k, j, i), or on the middle of the volume."""
    shape = analysis.volume.shape
    point = voxel if voxel is not None else tuple((s - 1) / 2 for s in shape)
    for view, axis in zip(VIEWS, range(3), strict=True):
        st.session_state[_slider_key(view)] = int(min(max(round(point[axis]), 0), shape[axis] - 1))


def _jump() -> None:
    analysis = st.session_state[ANALYSES_KEY][st.session_state[SHOWN_KEY]]
    choice = st.session_state.get("nodule_jump", 0)
    if choice:
        _centre_on(analysis, analysis.detection.nodules[choice - 1].center_voxel)


def _remember(key: str, analysis: Analysis) -> None:
    analyses: dict[str, Analysis] = st.session_state.setdefault(ANALYSES_KEY, {})
    analyses.pop(key, None)
    analyses[key] = analysis
    while len(analyses) > KEEP_ANALYSES:
        analyses.pop(next(iter(analyses)))
    st.session_state[SHOWN_KEY] = key
    nodules = analysis.detection.nodules
    _centre_on(analysis, nodules[0].center_voxel if nodules else None)
    st.session_state["nodule_jump"] = 1 if nodules else 0


def _choose_study() -> tuple[str, Any] | None:
    """The study the user picked: ``(key, source)``, or None while there is none."""
    folder_tab, upload_tab = st.tabs(["Folder on the server", "Upload"])
    with folder_tab:
        if "nodule_folder" not in st.session_state:
            st.session_state["nodule_folder"] = default_study()
        if not default_study():
            st.caption(
                "No sample study yet: make a synthetic chest CT (a phantom with nodules) to try the page."
            )
            size = st.selectbox("Phantom size", SAMPLE_SIZES, key="nodule_sample_size")
            if st.button("Make a sample phantom study", key="nodule_make_sample"):
                with st.spinner("Drawing and writing the phantom study..."):
                    st.session_state["nodule_folder"] = str(make_sample(size))
                st.rerun()
        folder = st.text_input("Study folder (DICOM files, sub-folders or a DICOMDIR)", key="nodule_folder")
    with upload_tab:
        files = st.file_uploader(
            "DICOM files of one study, or one .zip", accept_multiple_files=True, key="nodule_uploads"
        )
    if files:
        return f"upload:{uploads_key(files)}", files
    if folder and folder.strip():
        path = Path(folder.strip()).expanduser()
        if not path.exists():
            st.error(f"No such folder or file: {path}")
            return None
        return f"folder:{path.resolve()}", path
    st.info("Choose a study folder, make the sample study, or upload DICOM files.")
    return None


def _analyse(key: str, source: Any) -> None:
    from apps.nodule.uploads import MAX_AGE_S, UploadError, prune_results
    from connectors.dicom.reader import DicomError

    try:
        detector = load_detector()
    except Exception as exc:
        _log.exception("loading the nodule detector failed")
        hint = "" if model_available() else " No model is installed: train one with `fathom nodule train`."
        st.error(f"The nodule detector could not be loaded ({type(exc).__name__}).{hint}")
        return
    from apps.nodule.pipeline import analyse

    viewer = cache_dir("nodule", "viewer")
    prune_results(viewer, MAX_AGE_S)  # the page's outputs and uploads, as the API keeps its results
    work = viewer / hashlib.sha256(key.encode()).hexdigest()[:32]
    shutil.rmtree(work / "out", ignore_errors=True)  # outputs carry fresh UIDs: no stale SEG beside the new
    try:
        with st.spinner("Reading the study and searching for nodules..."):
            if not isinstance(source, Path):
                source = save_uploaded(source, work / "upload")
            analysis = analyse(source, work / "out", detector=detector)
    except UploadError as exc:
        st.error(f"The upload cannot be used: {exc.detail}")
        return
    except DicomError as exc:
        st.error(f"The study cannot be analysed: {exc}")
        return
    finally:
        shutil.rmtree(work / "upload", ignore_errors=True)  # the volume is in memory now
    _remember(key, analysis)


def _show_views(analysis: Analysis) -> None:
    nodules = analysis.detection.nodules
    left, right = st.columns([1, 2])
    window = WINDOWS[left.radio("Window", list(WINDOWS), horizontal=True, key="nodule_window")]
    if nodules:
        labels = [
            "(none)",
            *(
                f"Nodule {n}: {c.diameter_mm:.1f} mm, confidence {c.confidence:.2f}"
                for n, c in enumerate(nodules, 1)
            ),
        ]
        right.selectbox(
            "Go to nodule",
            range(len(labels)),
            format_func=labels.__getitem__,
            key="nodule_jump",
            on_change=_jump,
        )
    shape = analysis.volume.shape
    for column, view, axis in zip(st.columns(3), VIEWS, range(3), strict=True):
        with column:
            index = st.slider(view, 0, shape[axis] - 1, key=_slider_key(view))
            st.image(
                view_image(analysis, view, index, window),
                caption=f"{view} {index + 1}/{shape[axis]}",
                width="stretch",
            )


def _show_downloads(analysis: Analysis) -> None:
    what = {
        "seg": ("DICOM SEG", "application/dicom"),
        "sr": ("DICOM SR", "application/dicom"),
        "report": ("Report", "text/markdown"),
    }
    columns = st.columns(len(what))
    for column, (kind, (label, mime)) in zip(columns, what.items(), strict=True):
        path = analysis.outputs.get(kind)
        if path is None or not Path(path).is_file():
            column.caption(f"No {label}" + (" (no nodule found)" if kind == "seg" else ""))
            continue
        column.download_button(
            f"Download {label}",
            Path(path).read_bytes(),
            file_name=Path(path).name,
            mime=mime,
            key=f"nodule_download_{kind}",
        )


def render() -> None:
    """The page: choose a study, analyse it, show the views, the nodules, the downloads and the notes."""
    st.title("Lung nodules")
    st.caption(
        "Computer-aided detection on chest CT, for research use; trained on synthetic data. "
        "Not a diagnosis: a radiologist reviews every finding."
    )
    if not model_available() and detector_factory is default_detector:
        st.warning(
            "No nodule model is installed yet (models/nodule-detector): train one with "
            "`fathom nodule train` or set FATHOM_NODULE_MODEL."
        )
    chosen = _choose_study()
    analyses: dict[str, Analysis] = st.session_state.setdefault(ANALYSES_KEY, {})
    if chosen is not None:
        key, source = chosen
        if st.button("Analyse again" if key in analyses else "Analyse", type="primary", key="nodule_analyse"):
            _analyse(key, source)
        if key in analyses and st.session_state.get(SHOWN_KEY) != key:
            _remember(key, analyses[key])
    shown = st.session_state.get(SHOWN_KEY)
    if chosen is None or shown != chosen[0] or shown not in analyses:
        return
    analysis = analyses[shown]
    nodules = analysis.detection.nodules
    st.subheader(f"{len(nodules)} nodule(s) found" if nodules else "No nodule found")
    v = analysis.volume
    st.caption(
        f"Series `{v.series_uid}`: {v.shape[0]} slices of {v.shape[1]}x{v.shape[2]}, spacing "
        f"{v.spacing[0]:.2f} x {v.spacing[1]:.2f} x {v.spacing[2]:.2f} mm; {analysis.seconds:.1f} s, "
        f"model {analysis.model}, reporting at confidence >= {analysis.report_threshold:.2f}."
    )
    _show_views(analysis)
    if nodules:
        st.dataframe(nodule_table(analysis), hide_index=True)
    _show_downloads(analysis)
    for note in analysis.notes:
        st.info(note)


if __name__ == "__main__":
    render()
