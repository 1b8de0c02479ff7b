"""Uploaded CT studies: DICOM files or one zip, saved safely, checked, and old results pruned.

Shared by the ``POST /nodule/detect`` route (``apps.nodule.api``) and the viewer's upload
(``apps.nodule.ui``). Loose files are stored under generated names (a client's file name never
becomes a path); a zip is unpacked with every member checked (no absolute paths, ``..``, links or
encryption) within size and count limits. Problems are ``UploadError``s whose ``status`` is the HTTP
status to answer (400 malformed, 413 too large, 415 not DICOM) and whose ``detail`` names the file
as the client sent it.
"""

from __future__ import annotations

import re
import shutil
import stat
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import UploadFile

MAX_FILES = 1000  # Starlette's own limit on files in one multipart form
MAX_UPLOAD_BYTES = 1 << 30  # 1 GiB: a 512x512 study of ~2000 slices
MAX_UNZIPPED_BYTES = 2 << 30
MAX_ZIP_MEMBERS = 10_000
MAX_AGE_S = 7 * 24 * 3600.0
RESULT_ID = re.compile(r"^[0-9a-f]{32}$")
_CHUNK = 1 << 20


class UploadError(Exception):
    """An upload that cannot be analysed; ``status`` and ``detail`` become the HTTP error."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _shown(name: str | None, index: int) -> str:
    """A client file name fit for an error message (printable, at most 80 characters)."""
    text = "".join(c for c in (name or "") if c.isprintable())[:80]
    return repr(text) if text else f"file #{index + 1}"


def _is_dicom(path: Path) -> bool:
    """Whether ``path`` carries the DICOM Part 10 ``DICM`` prefix (what the scanner reads)."""
    with path.open("rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def _copy(src: Any, dst: Path, budget: int, too_large: str) -> int:
    """Copy the file object ``src`` into ``dst``; the bytes written, at most ``budget`` (else 413)."""
    written = 0
    with dst.open("wb") as out:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > budget:
                raise UploadError(413, too_large)
            out.write(chunk)
    return written


def _member_path(info: zipfile.ZipInfo) -> PurePosixPath:
    """The safe relative path of a zip member; 400 for absolute paths, ``..``, links or encryption."""
    name = info.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    shown = _shown(info.filename, 0)
    if name.startswith("/") or (parts and ":" in parts[0]) or ".." in parts:
        raise UploadError(400, f"zip member {shown} points outside the archive (absolute path or '..')")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UploadError(400, f"zip member {shown} is a symbolic link; links are not accepted")
    if info.flag_bits & 0x1:
        raise UploadError(400, f"zip member {shown} is encrypted; send an unencrypted zip")
    return PurePosixPath(*[p for p in parts if p not in ("", ".")])


def extract_zip(archive: Path, dest: Path) -> int:
    """Unpack ``archive`` into ``dest`` safely; the number of files written.

    Raises:
        UploadError: 400 for a damaged or unsafe archive, 413 for too many or too large members.
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            if len(infos) > MAX_ZIP_MEMBERS:
                raise UploadError(413, f"the zip holds {len(infos)} files; the limit is {MAX_ZIP_MEMBERS}")
            targets = [(info, _member_path(info)) for info in infos]
            if sum(i.file_size for i in infos) > MAX_UNZIPPED_BYTES:
                raise UploadError(
                    413, f"the zip unpacks to more than the limit of {MAX_UNZIPPED_BYTES} bytes"
                )
            left = MAX_UNZIPPED_BYTES
            root = dest.resolve()
            for info, rel in targets:
                if not rel.parts:
                    continue
                target = dest.joinpath(*rel.parts)
                if not target.resolve().is_relative_to(root):  # belt and braces after _member_path
                    raise UploadError(
                        400, f"zip member {_shown(info.filename, 0)} points outside the archive"
                    )
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src:
                    left -= _copy(
                        src, target, left, f"the zip unpacks to more than {MAX_UNZIPPED_BYTES} bytes"
                    )
            return len(targets)
    except zipfile.BadZipFile as exc:
        raise UploadError(400, f"not a valid zip archive ({exc})") from exc
    except (NotImplementedError, RuntimeError) as exc:  # unsupported compression, encryption
        raise UploadError(400, f"the zip cannot be unpacked ({exc})") from exc


def save_uploads(files: list[UploadFile], dest: Path) -> dict[str, str]:
    """Write the uploaded DICOM files (or unpack the one zip) into ``dest``.

    Loose files are stored under generated names (a client's file name never becomes a path).

    Returns:
        Stored path -> the name to show in messages (the client's file name).

    Raises:
        UploadError: 400 no file, a zip among other files, a bad zip; 413 too many or too large;
            415 a file that is not DICOM, or a zip without DICOM files.
    """
    files = [f for f in files if f.filename or (f.size or 0) > 0]
    if not files:
        raise UploadError(
            400, "no file uploaded: send the study's DICOM files, or one .zip, as field 'files'"
        )
    if len(files) > MAX_FILES:
        raise UploadError(413, f"{len(files)} files uploaded; the limit is {MAX_FILES} (send a .zip)")
    dest.mkdir(parents=True, exist_ok=True)
    names: dict[str, str] = {}
    zips: list[Path] = []
    left = MAX_UPLOAD_BYTES
    for i, upload in enumerate(files):
        path = dest / f"upload-{i:05d}.dcm"
        left -= _copy(upload.file, path, left, f"the upload is larger than {MAX_UPLOAD_BYTES} bytes")
        names[str(path)] = _shown(upload.filename, i)
        named_zip = (upload.filename or "").lower().endswith(".zip")
        if not _is_dicom(path) and (named_zip or zipfile.is_zipfile(path)):
            zips.append(path)
    if zips and len(names) > 1:
        raise UploadError(400, "send either one .zip of the study or its DICOM files, not both")
    if zips:
        archive = zips[0].rename(dest.parent / "upload.zip")
        names.clear()
        extract_zip(archive, dest)
        archive.unlink()
        if not any(_is_dicom(p) for p in dest.rglob("*") if p.is_file()):
            raise UploadError(415, "the zip holds no DICOM Part 10 file (no 'DICM' prefix in any file)")
        return {str(p): str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()}
    for path, shown in names.items():
        if not _is_dicom(Path(path)):
            raise UploadError(415, f"{shown} is not a DICOM Part 10 file (no 'DICM' prefix) nor a .zip")
    return names


def public_message(message: str, names: dict[str, str], roots: list[Path]) -> str:
    """``message`` with stored paths replaced by the client's names and server folders removed."""
    for path in sorted(names, key=len, reverse=True):
        message = message.replace(path, names[path])
    for root in roots:
        message = message.replace(f"{root}/", "").replace(str(root), "the upload")
    return message


def prune_results(results_dir: Path, max_age_s: float) -> int:
    """Delete result folders last changed more than ``max_age_s`` ago; how many were deleted."""
    if not results_dir.is_dir():
        return 0
    cutoff, removed = time.time() - max_age_s, 0
    for folder in results_dir.iterdir():
        if folder.is_dir() and RESULT_ID.match(folder.name) and folder.stat().st_mtime < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


__all__ = [
    "MAX_AGE_S",
    "MAX_FILES",
    "MAX_UNZIPPED_BYTES",
    "MAX_UPLOAD_BYTES",
    "MAX_ZIP_MEMBERS",
    "RESULT_ID",
    "UploadError",
    "extract_zip",
    "prune_results",
    "public_message",
    "save_uploads",
]
