"""``fathom nodule``: phantoms, detect, batch, evaluate, train, listen (PACS worker), deid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

nodule_app = typer.Typer(
    help="Nodule: synthetic chest CT phantoms, detection, DICOM results.", no_args_is_help=True
)

SIZES = ("tiny", "small", "medium", "default")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@nodule_app.callback()
def _main() -> None:
    """Nodule: synthetic chest CT phantoms, detection, DICOM results."""


@nodule_app.command("phantoms")
def phantoms_command(
    out: Annotated[
        Path, typer.Option("--out", help="Folder to write (created); one sub-folder per phantom.")
    ],
    n: Annotated[int, typer.Option("--n", help="Number of phantoms (>= 1).")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; same seed, same files.")] = 0,
    size: Annotated[
        str, typer.Option("--size", help="tiny (64x64), small (128-160), medium (256) or default (512).")
    ] = "default",
) -> None:
    """Write synthetic chest CT series with nodules: DICOM slices, masks.npz and truth.json per phantom."""
    from rich.progress import track

    from apps.nodule.dicom_writer import write_phantom
    from apps.nodule.lidc import lidc_available
    from apps.nodule.phantoms import PhantomConfig, make_phantom, phantom_seed

    if n < 1:
        _fail(f"--n must be >= 1, got {n}")
    if size not in SIZES:
        _fail(f"--size must be one of {', '.join(SIZES)}, got {size!r}")
    if out.exists() and not out.is_dir():
        _fail(f"--out {out} exists and is not a folder")
    config = PhantomConfig.named(size)
    has_lidc, why = lidc_available(config.lidc_path)
    if not has_lidc:
        typer.echo(f"note: {why}; nodule shapes are parametric", err=True)
    out.mkdir(parents=True, exist_ok=True)
    index = []
    for i in track(range(n), description=f"phantoms ({size})", disable=n < 2):
        name = f"phantom_{i:03d}"
        phantom = make_phantom(config, phantom_seed(seed, i))
        truth = write_phantom(phantom, out / name, patient_id=f"PHANTOM-{seed}-{i:03d}")
        index.append({"name": name, "seed": phantom.seed, "n_nodules": len(truth["nodules"])})
    (out / "index.json").write_text(json.dumps({"seed": seed, "size": size, "phantoms": index}, indent=2))
    total = sum(item["n_nodules"] for item in index)
    print(f"wrote {n} phantom series with {total} nodules to {out} (index.json lists them)")


@nodule_app.command("deid")
def deid_command(
    source: Annotated[Path, typer.Argument(help="A DICOM file or a folder of DICOM files.")],
    out: Annotated[
        Path, typer.Option("--out", help="Where to write (a file for a file, a folder for a folder).")
    ],
    uid_root: Annotated[
        str, typer.Option(help="Root of the new UIDs (2.25: no registration needed).")
    ] = "2.25",
    date_shift_days: Annotated[
        int | None, typer.Option(help="Shift every date by this many days instead of removing dates.")
    ] = None,
    keep_private: Annotated[
        bool, typer.Option(help="Keep private attributes (they often hold PHI).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the written files as JSON.")] = False,
) -> None:
    """De-identify DICOM (PS3.15 basic profile) before it leaves the hospital (salt: $FATHOM_DEID_SALT)."""
    from connectors.dicom.deid import DeidConfig, Deidentifier
    from connectors.dicom.reader import DicomError

    if not source.exists():
        _fail(f"{source} does not exist")
    try:
        deid = Deidentifier(
            DeidConfig(uid_root=uid_root, keep_private=keep_private, date_shift_days=date_shift_days)
        )
        written = deid.folder(source, out) if source.is_dir() else [deid.file(source, out)]
    except (DicomError, ValueError) as exc:
        _fail(str(exc).splitlines()[0])
    if as_json:
        print(json.dumps({"written": [str(p) for p in written]}))
        return
    print(f"de-identified {len(written)} file(s) into {out}")


@nodule_app.command("detect")
def detect_command(
    paths: Annotated[
        list[Path],
        typer.Argument(help="A DICOM folder, a DICOMDIR, one file, or several files of one series."),
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for SEG, SR, report.md and result.json.")] = Path(
        "nodule-results"
    ),
    model: Annotated[
        Path | None,
        typer.Option("--model", help="Model folder (default: the shipped models/nodule-detector)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Find lung nodules in a CT study; write a DICOM SEG, a TID 1500 SR and a report."""
    from apps.nodule.pipeline import analyse
    from connectors.dicom.reader import DicomError

    if out.exists() and not out.is_dir():
        _fail(f"--out {out} exists and is not a folder")
    source: Path | list[Path] = paths[0] if len(paths) == 1 else paths
    try:
        analysis = analyse(source, out, model_dir=model)
    except (DicomError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc).splitlines()[0])
    result = analysis.to_json()
    if as_json:
        print(json.dumps(result))
        return
    nodules = result["nodules"]
    print(f"series {result['series_uid']}: {len(nodules)} nodule(s) in {result['seconds']:.1f} s")
    for i, n in enumerate(nodules, 1):
        x, y, z = n["center_mm"]
        print(
            f"  {i}. ({x:.1f}, {y:.1f}, {z:.1f}) mm, {n['diameter_mm']:.1f} mm, "
            f"confidence {n['confidence']:.2f}"
        )
    for kind, path in result["outputs"].items():
        if path:
            print(f"  {kind}: {path}")


@nodule_app.command("evaluate")
def evaluate_command(
    phantoms_n: Annotated[int, typer.Option("--phantoms", help="Held-out phantoms to score (>= 1).")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the held-out phantoms.")] = 0,
    size: Annotated[
        str, typer.Option("--size", help="Phantom size: tiny, small, medium, default.")
    ] = "medium",
    model: Annotated[
        Path | None,
        typer.Option("--model", help="Model folder (default: the shipped models/nodule-detector)."),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(help="Score on a data set instead: luna16:/path or lidc:/dicom/root[?sqlite=/path]."),
    ] = None,
    split: Annotated[str, typer.Option(help="With --data: train, fp, val or test.")] = "test",
    limit: Annotated[int | None, typer.Option(help="With --data: at most this many scans.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the scores as JSON.")] = False,
) -> None:
    """Score the detector on held-out phantoms (or LUNA16 / LIDC-IDRI): FROC/CPM (LUNA16 protocol), Dice."""
    from apps.nodule.detect import NoduleDetector
    from apps.nodule.validate import phantoms, score_detector

    if phantoms_n < 1:
        _fail(f"--phantoms must be >= 1, got {phantoms_n}")
    if size not in SIZES:
        _fail(f"--size must be one of {', '.join(SIZES)}, got {size!r}")
    try:
        detector = NoduleDetector.load(model)
        if data is None:
            scans = phantoms(size, phantoms_n, seed)
        else:
            from apps.nodule.datasets import dataset_scans

            scans = dataset_scans(data, split, limit=limit)
        scores = score_detector(detector, scans)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc).splitlines()[0])
    result = {
        "cpm": scores["cpm"],
        "sensitivity_at_1fp": scores["sensitivity_at_1fp"],
        "dice": scores["dice"],
        "n_scans": scores["n_scans"],
        "n_truths": scores["n_truths"],
        "sensitivities": scores["sensitivities"],
        "seconds_per_scan": scores["seconds_per_scan"],
        **({"size": size, "seed": seed} if data is None else {"data": data, "split": split}),
    }
    if as_json:
        print(json.dumps(result))
        return
    dice_text = "n/a" if result["dice"] is None else f"{result['dice']:.3f}"
    what = f"{size} phantoms" if data is None else f"{data} ({split})"
    print(
        f"CPM {result['cpm'] or 0:.3f}, sensitivity at 1 FP/scan {result['sensitivity_at_1fp'] or 0:.3f}, "
        f"Dice {dice_text} over {result['n_scans']} scans of {what} ({result['n_truths']} nodules)"
    )


@nodule_app.command("train")
def train_command(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the model to.")],
    model: Annotated[str, typer.Option("--model", help="Network size: tiny, student, default.")] = "default",
    teacher: Annotated[
        Path | None, typer.Option("--teacher", help="Distil from this trained model (for the student).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML of NoduleTrainConfig fields (CLI options override).")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Optimiser steps.")] = None,
    n_train: Annotated[int | None, typer.Option(help="Training phantoms.")] = None,
    phantom_size: Annotated[str | None, typer.Option(help="Phantom size to train on.")] = None,
    data: Annotated[
        str | None, typer.Option(help="phantoms (default), luna16:/path or lidc:/dicom/root[?sqlite=/path].")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of phantoms, crops and weights.")] = None,
    init: Annotated[
        Path | None,
        typer.Option(
            "--init",
            help="Continue from this trained model's weights (same network; with --patch-steps 0 "
            "its patch classifier too).",
        ),
    ] = None,
    patch_steps: Annotated[
        int | None, typer.Option(help="Steps of the patch classifier (second stage; 0: none).")
    ] = None,
    n_patch: Annotated[
        int | None,
        typer.Option(help="More phantoms for the patch classifier alone (cubes, no U-Net steps)."),
    ] = None,
    hard_weight: Annotated[
        int | None,
        typer.Option(help="Crop the training nodules the network misses this many times as often (1: off)."),
    ] = None,
    crop_shift: Annotated[
        int | None,
        typer.Option(help="Centre positive crops up to this many voxels off the nodule (0: centred)."),
    ] = None,
    juxtavascular: Annotated[
        float | None,
        typer.Option(help="Probability that a training phantom's nodule sits on a vessel (0: as evaluated)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """Train the nodule U-Net on phantoms, then its patch classifier and false-positive reducer;
    --teacher distils; --init DIR --steps 0 trains only the second stage of a trained model."""
    from apps.nodule.model import NoduleModel
    from apps.nodule.train import NoduleTrainConfig, train

    try:
        base = NoduleTrainConfig.from_yaml(config) if config else NoduleTrainConfig()
        overrides = {
            "model": model,
            "steps": steps,
            "n_train": n_train,
            "phantom_size": phantom_size,
            "seed": seed,
            "data": data,
            "init": str(init) if init is not None else None,
            "patch_steps": patch_steps,
            "n_patch": n_patch,
            "hard_weight": hard_weight,
            "crop_shift": crop_shift,
            "juxtavascular": juxtavascular,
        }
        cfg = NoduleTrainConfig.from_dict(
            {**base.to_dict(), **{k: v for k, v in overrides.items() if v is not None}}
        )
        teacher_model = NoduleModel.load(teacher) if teacher is not None else None
        if cfg.init is not None:
            NoduleModel.load(cfg.init)  # a missing or broken init model fails here, not after the data
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc).splitlines()[0])
    try:
        _, metrics = train(cfg, out, teacher=teacher_model, progress=not as_json)
    except ValueError as exc:
        _fail(str(exc).splitlines()[0])
    if as_json:
        print(json.dumps({k: v for k, v in metrics.items() if k != "history"}))
        return
    print(
        f"saved {out}: validation CPM {metrics['val_cpm'] or 0:.3f}, Dice {metrics['val_dice'] or 0:.3f}, "
        f"{metrics['n_parameters']} parameters, {metrics['train_seconds']:.0f} s"
    )


def _register() -> None:
    from apps.nodule.batch import batch_command
    from apps.nodule.listen import listen_command

    nodule_app.command("listen")(listen_command)
    nodule_app.command("batch")(batch_command)


_register()
