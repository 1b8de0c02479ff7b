"""``fathom nodule``: the nodule commands (phantoms, deid)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

nodule_app = typer.Typer(
    help="Nodule: synthetic chest CT phantoms, detection, DICOM results.", no_args_is_help=True
)

SIZES = ("tiny", "small", "default")


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
        str, typer.Option("--size", help="tiny (64x64), small (128-160) or default (512).")
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
