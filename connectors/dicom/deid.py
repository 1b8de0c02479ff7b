"""De-identify DICOM leaving the hospital: PS3.15 Annex E Basic Application Level Confidentiality Profile.

The action table (Table E.1-1: which attribute is Dummy-replaced, Zeroed, removed (X), kept, or has
its UID replaced) is the one ``dicom-anonymizer`` ships, generated from the standard (edition
2026c); this module applies it with its own engine, because that library's engine draws random UIDs
(so two runs of one study disagree), ignores attributes nested in sequences and prints to stdout.

What is done to each dataset (a copy; the input is never changed):

- every attribute of Table E.1-1, at any depth of nesting, gets its action. Where the table offers a
  choice the smallest disclosure is taken: ``X/Z``, ``X/D``, ``X/Z/D`` remove, ``Z/D`` empties,
  ``X/Z/U*`` keeps the sequence with its UIDs replaced;
- UIDs (``U``) become ``<uid_root>.<digits of HMAC-SHA256(salt, uid)>``: the same UID gives the same
  new UID in every file of a run and in every run with the same salt, so study, series, frame of
  reference and the references in sequences stay consistent. The File Meta's
  MediaStorageSOPInstanceUID follows SOPInstanceUID;
- PatientID and PatientName become one pseudonym per patient, ``<patient_id_prefix>-<16 hex>``,
  an HMAC of the original PatientID (so a patient's studies stay linked without the salt revealing
  who it is);
- dates: with ``date_shift_days=None`` they follow the table (emptied, dummy or removed); with an int,
  every DA and DT value is shifted by that many days, times are kept (PatientBirthTime removed) and
  LongitudinalTemporalInformationModified is ``MODIFIED`` (PS3.15 option code 113107);
- private attributes are removed (``keep_private=True`` keeps them all: the caller then vouches for
  them), and so are curve (50xx) and overlay (60xx) groups;
- PixelData is never touched; a dataset with ``BurnedInAnnotation == "YES"`` is refused, since the
  basic profile cannot clean identifying text burned into pixels;
- PatientIdentityRemoved ``YES``, DeidentificationMethod, and DeidentificationMethodCodeSequence with
  (113100, DCM, "Basic Application Confidentiality Profile") (+ 113107 when dates were shifted).

Before any file is written, ``remaining_phi`` checks the result against the original; a file that
still holds an identifying value raises ``DicomError`` and nothing is written.

Example::

    from connectors.dicom.deid import DeidConfig, Deidentifier, remaining_phi

    deid = Deidentifier(DeidConfig(salt="site-secret", uid_root="2.25"))   # or FATHOM_DEID_SALT
    written = deid.folder("/pacs/export/study42", "/outbox/study42")       # keeps the layout
    clean = deid.dataset(pydicom.dcmread("slice.dcm"))                      # in memory
    assert not remaining_phi(clean)
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import hmac
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

from connectors.dicom.reader import DicomError

log = logging.getLogger(__name__)

SALT_ENV = "FATHOM_DEID_SALT"
TABLE_EDITION = "dicomfields_2026c"
BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
MODIFIED_DATES_CODE = ("113107", "DCM", "Retain Longitudinal Temporal Information Modified Dates Option")
METHOD = "PS3.15 E Basic Application Confidentiality Profile; Fathom"  # LO: at most 64

_UID_ROOT_RE = re.compile(r"^(0|[1-9]\d*)(\.(0|[1-9]\d*))*$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_]{1,40}$")
_PSEUDONYM_RE = re.compile(r"^[A-Za-z0-9_]{1,40}-[0-9A-F]{16}$")
_MAX_UID_ROOT = 32  # leaves at least 31 digits of hash under the 64-character UID limit

# Dummy values (action D) by VR; anything else with D is removed.
_DUMMY = {
    "PN": "ANONYMOUS",
    "LO": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "UT": "ANONYMIZED",
    "UC": "ANONYMIZED",
    "CS": "ANONYMIZED",
    "AE": "ANONYMIZED",
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000Y",
    "IS": "0",
    "DS": "0",
}
_DUMMY_VALUES = set(_DUMMY.values())
# VRs whose original values are looked for anywhere in the output (numbers and codes would match by chance)
_LEAK_VRS = {"PN", "LO", "SH", "LT", "ST", "UT", "UC", "UI", "DA", "DT", "AE"}

_PIXEL_GROUP = 0x7FE0
_PATIENT_ID = Tag(0x0010, 0x0020)
_PATIENT_NAME = Tag(0x0010, 0x0010)
_PATIENT_BIRTH_TIME = Tag(0x0010, 0x0032)
_SOP_INSTANCE_UID = Tag(0x0008, 0x0018)
_MEDIA_SOP_INSTANCE_UID = Tag(0x0002, 0x0003)
_KEEP_ALWAYS = {
    # written by this module; not identifying
    Tag(0x0012, 0x0062),  # PatientIdentityRemoved
    Tag(0x0012, 0x0063),  # DeidentificationMethod
    Tag(0x0012, 0x0064),  # DeidentificationMethodCodeSequence
    Tag(0x0028, 0x0303),  # LongitudinalTemporalInformationModified
}


def _load_table() -> dict[int, str]:
    """Table E.1-1 as ``{tag: action}`` with actions ``D Z X U Z/D X/Z X/D X/Z/D X/Z/U*``."""
    try:
        from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
    except ImportError as e:  # pragma: no cover - dependency declared in pyproject
        raise ImportError("de-identification needs the 'dicom-anonymizer' package (Table E.1-1)") from e
    db = dicom_anonymization_database_selector(TABLE_EDITION)
    names = {
        "D_TAGS": "D",
        "Z_TAGS": "Z",
        "X_TAGS": "X",
        "U_TAGS": "U",
        "Z_D_TAGS": "Z/D",
        "X_Z_TAGS": "X/Z",
        "X_D_TAGS": "X/D",
        "X_Z_D_TAGS": "X/Z/D",
        "X_Z_U_STAR_TAGS": "X/Z/U*",
    }
    table: dict[int, str] = {}
    for key, action in names.items():
        for entry in db[key]:
            if len(entry) == 2:  # repeating groups (curves 50xx, overlays 60xx) are removed whole below
                table[int(Tag(entry[0], entry[1]))] = action
    return table


_TABLE = _load_table()


def _is_curve_or_overlay(tag: BaseTag) -> bool:
    return tag.group & 0xFF00 in (0x5000, 0x6000) and not tag.is_private


def _hmac_hex(salt: str, kind: str, value: str) -> str:
    return hmac.new(salt.encode(), f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()


@dataclass
class DeidConfig:
    """Settings of a de-identification run.

    Args:
        uid_root: Root of the new UIDs (``2.25``: UUID-derived, needs no registration); digits and dots,
            at most 32 characters.
        salt: Secret that keys the UID and pseudonym hashes; defaults to ``$FATHOM_DEID_SALT``. The
            same salt gives the same output across runs; keep it secret, since whoever holds it can
            test a guessed PatientID or UID against the output.
        patient_id_prefix: Prefix of the patient pseudonym (letters, digits, ``_``).
        keep_private: Keep private attributes (off by default; they often hold PHI).
        date_shift_days: ``None`` to empty/remove dates as the table says; an int shifts every date
            by that many days instead.

    Raises:
        ValueError: On an empty salt, a malformed root or prefix.
    """

    uid_root: str = "2.25"
    salt: str = field(default_factory=lambda: os.environ.get(SALT_ENV, ""), repr=False)
    patient_id_prefix: str = "ANON"
    keep_private: bool = False
    date_shift_days: int | None = None

    def __post_init__(self) -> None:
        if not self.salt or not self.salt.strip():
            raise ValueError(f"DeidConfig.salt is empty: pass salt=... or set ${SALT_ENV} to a secret string")
        root = self.uid_root.rstrip(".")
        if not _UID_ROOT_RE.match(root) or len(root) > _MAX_UID_ROOT:
            raise ValueError(
                f"DeidConfig.uid_root {self.uid_root!r} is not a UID root (digits and dots, no leading "
                f"zeros, at most {_MAX_UID_ROOT} characters)"
            )
        self.uid_root = root
        if not _PREFIX_RE.match(self.patient_id_prefix):
            raise ValueError(
                f"DeidConfig.patient_id_prefix {self.patient_id_prefix!r}: use 1-40 letters, digits or '_'"
            )
        if self.date_shift_days is not None and not isinstance(self.date_shift_days, int):
            raise ValueError(f"DeidConfig.date_shift_days must be an int or None: {self.date_shift_days!r}")


class Deidentifier:
    """Apply the basic profile with consistent UID remapping (see the module docstring).

    Args:
        config: The run's settings.
    """

    def __init__(self, config: DeidConfig) -> None:
        self.config = config
        self._uids: dict[str, str] = {}

    # -- mappings -------------------------------------------------------------------------------

    def uid(self, uid: str) -> str:
        """The new UID for ``uid``: ``<root>.<HMAC-derived digits>``, valid and at most 64 characters."""
        uid = str(uid).strip().rstrip("\x00")
        if not uid:
            return uid
        new = self._uids.get(uid)
        if new is None:
            digest = int(_hmac_hex(self.config.salt, "uid", uid), 16)
            if self.config.uid_root == "2.25":
                digits = str(digest >> 128)  # 128 bits, as a UUID-derived 2.25 UID
            else:
                digits = str(digest)[: 64 - len(self.config.uid_root) - 1]
            new = f"{self.config.uid_root}.{digits}"
            self._uids[uid] = new
        return new

    def pseudonym(self, patient_id: str) -> str:
        """The patient pseudonym used for PatientID and PatientName."""
        digest = _hmac_hex(self.config.salt, "patient", patient_id)
        return f"{self.config.patient_id_prefix}-{digest[:16].upper()}"

    # -- datasets -------------------------------------------------------------------------------

    def dataset(self, ds: Dataset) -> Dataset:
        """A de-identified copy of ``ds`` (the input is untouched).

        Raises:
            DicomError: When the dataset says it has burned-in annotation, or a value cannot be handled.
        """
        if not isinstance(ds, Dataset):
            raise DicomError(f"expected a pydicom Dataset, got {type(ds).__name__}")
        if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
            raise DicomError("BurnedInAnnotation is YES: text burned into the pixels needs Clean Pixel Data")
        out = copy.deepcopy(ds)  # pixel bytes included, so ``ds`` stays as it was
        patient = str(ds.get("PatientID", "") or ds.get("PatientName", "") or "")
        self._walk(out)
        pseudonym = self.pseudonym(patient)
        out.PatientID = pseudonym
        out.PatientName = pseudonym
        meta = getattr(out, "file_meta", None)
        if meta is not None:
            if "SOPInstanceUID" in out:
                meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
            elif _MEDIA_SOP_INSTANCE_UID in meta:
                meta.MediaStorageSOPInstanceUID = self.uid(meta.MediaStorageSOPInstanceUID)
            if "SourceApplicationEntityTitle" in meta:
                del meta.SourceApplicationEntityTitle
        self._mark(out)
        return out

    def _mark(self, ds: Dataset) -> None:
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = METHOD
        codes = [BASIC_PROFILE_CODE]
        if self.config.date_shift_days is not None:
            codes.append(MODIFIED_DATES_CODE)
            ds.LongitudinalTemporalInformationModified = "MODIFIED"
        else:
            ds.LongitudinalTemporalInformationModified = "REMOVED"
        items = []
        for value, scheme, meaning in codes:
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = scheme
            item.CodeMeaning = meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(items)

    def _walk(self, ds: Dataset) -> None:
        for elem in list(ds):
            tag = elem.tag
            if tag.group == _PIXEL_GROUP or tag in _KEEP_ALWAYS:
                continue
            if tag.is_private:
                if not self.config.keep_private:
                    del ds[tag]
                continue
            if _is_curve_or_overlay(tag):
                del ds[tag]
                continue
            action = _TABLE.get(int(tag))
            if self.config.date_shift_days is not None and elem.VR in ("DA", "DT", "TM") and action != "U":
                self._shift(ds, elem)
                continue
            if action is None:
                if elem.VR == "SQ":
                    for item in elem.value:
                        self._walk(item)
                continue
            self._apply(ds, elem, action)

    def _apply(self, ds: Dataset, elem: DataElement, action: str) -> None:
        if action == "U" or action == "X/Z/U*":
            if elem.VR == "UI":
                self._replace_uid(elem)
            elif elem.VR == "SQ":
                for item in elem.value:
                    self._walk(item)
            elif action == "U":
                del ds[elem.tag]
            else:
                elem.value = ""
        elif action.startswith("X"):
            del ds[elem.tag]
        elif action in ("Z", "Z/D"):
            elem.value = Sequence() if elem.VR == "SQ" else None
        elif action == "D":
            if elem.VR == "UI":
                self._replace_uid(elem)
            elif elem.VR in _DUMMY:
                elem.value = _DUMMY[elem.VR]
            else:  # SQ, binary VRs: no safe dummy of that shape; remove
                del ds[elem.tag]
        else:  # pragma: no cover - the table has only the actions above
            raise DicomError(f"unknown de-identification action {action!r} for {elem.tag}")

    def _replace_uid(self, elem: DataElement) -> None:
        if elem.VM > 1:
            elem.value = [self.uid(v) for v in elem.value]
        elif elem.value:
            elem.value = self.uid(elem.value)

    def _shift(self, ds: Dataset, elem: DataElement) -> None:
        if elem.tag == _PATIENT_BIRTH_TIME:
            del ds[elem.tag]
            return
        if elem.VR == "TM" or not elem.value:
            return
        values = list(elem.value) if elem.VM > 1 else [elem.value]
        shifted = [_shift_value(str(v), self.config.date_shift_days or 0) for v in values]
        if any(s is None for s in shifted):
            elem.value = None  # unparseable date: drop the value rather than leak it
        else:
            elem.value = shifted if len(shifted) > 1 else shifted[0]

    # -- files ----------------------------------------------------------------------------------

    def file(self, src: str | Path, dst: str | Path) -> Path:
        """De-identify one DICOM file to ``dst`` (parents created; written atomically).

        Raises:
            DicomError: When ``src`` is not DICOM, or the result still holds PHI (nothing written).
        """
        src, dst = Path(src), Path(dst)
        try:
            original = pydicom.dcmread(src)
        except (InvalidDicomError, EOFError, ValueError, OSError) as e:
            raise DicomError(f"not a readable DICOM file ({type(e).__name__})", src) from e
        try:
            clean = self.dataset(original)
        except DicomError as e:
            raise DicomError(e.reason, src) from e
        left = remaining_phi(clean, original, allow_private=self.config.keep_private)
        if left:
            raise DicomError(f"identifying values remain after de-identification: {', '.join(left)}", src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.deid-tmp")
        try:
            clean.save_as(tmp, enforce_file_format=False)
            tmp.replace(dst)
        finally:
            tmp.unlink(missing_ok=True)
        return dst

    def folder(self, src_dir: str | Path, dst_dir: str | Path) -> list[Path]:
        """De-identify every DICOM file under ``src_dir`` into ``dst_dir``, keeping the relative layout.

        Non-DICOM files and DICOMDIRs (which index the original names and UIDs) are skipped with a
        logged warning and not copied.

        Returns:
            The written files, in sorted source order.

        Raises:
            DicomError: When ``src_dir`` is not a folder, or a DICOM file fails (see ``file``).
        """
        src_dir, dst_dir = Path(src_dir), Path(dst_dir)
        if not src_dir.is_dir():
            raise DicomError("not a folder", src_dir)
        written = []
        for path, why in _candidates(src_dir):
            rel = path.relative_to(src_dir)
            if why:
                log.warning("de-identification skips %s: %s", rel, why)
                continue
            written.append(self.file(path, dst_dir / rel))
        return written


def _candidates(folder: Path) -> Iterator[tuple[Path, str]]:
    """Files under ``folder`` with the reason to skip each ("" for a DICOM Part 10 file)."""
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        if p.name.upper() == "DICOMDIR":
            yield p, "a DICOMDIR (it indexes original names and UIDs)"
            continue
        try:
            with p.open("rb") as f:
                head = f.read(132)
        except OSError as e:
            raise DicomError(f"cannot read file ({e})", p) from e
        is_dicom = len(head) == 132 and head[128:] == b"DICM"
        yield p, "" if is_dicom else "not a DICOM Part 10 file (no DICM prefix)"


def _shift_value(value: str, days: int) -> str | None:
    """Shift a DA or DT value by ``days``; ``None`` when it is not a full date."""
    value = value.strip()
    if len(value) < 8 or not value[:8].isdigit():
        return None
    try:
        day = dt.datetime.strptime(value[:8], "%Y%m%d").date() + dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return f"{day:%Y%m%d}{value[8:]}"


def _iter_elements(ds: Dataset, path: str = "") -> Iterator[tuple[str, Dataset, DataElement]]:
    for elem in ds:
        where = f"{path}{elem.keyword or elem.tag}"
        yield where, ds, elem
        if elem.VR == "SQ" and elem.value:
            for i, item in enumerate(elem.value):
                yield from _iter_elements(item, f"{where}[{i}].")


def _values(elem: DataElement) -> list[str]:
    if elem.VR == "SQ" or elem.value is None or isinstance(elem.value, bytes | bytearray):
        return []
    raw = list(elem.value) if elem.VM > 1 else [elem.value]
    return [str(v).strip() for v in raw if str(v).strip()]


def remaining_phi(ds: Dataset, original: Dataset | None = None, *, allow_private: bool = False) -> list[str]:
    """Attributes of ``ds`` that still hold identifying values; empty when it looks de-identified.

    Checks, at every depth: PatientIdentityRemoved is YES; no private attributes (unless
    ``allow_private``); no curve or overlay groups; every Table E.1-1 attribute whose action is not
    ``U`` is absent, empty, a dummy value or the patient pseudonym (dates may hold values when the
    dataset declares them modified, code 113107). With ``original``, also that no name, ID, date or
    UID of the original's Table E.1-1 attributes appears anywhere in ``ds``.

    Args:
        ds: The de-identified dataset.
        original: The dataset before de-identification, when at hand.
        allow_private: Accept private attributes (a run with ``keep_private=True``).

    Returns:
        One entry per problem, ``"<attribute path>: <why>"``.
    """
    found = []
    if str(ds.get("PatientIdentityRemoved", "")).upper() != "YES":
        found.append("PatientIdentityRemoved: not YES")
    dates_modified = str(ds.get("LongitudinalTemporalInformationModified", "")).upper() == "MODIFIED"
    leaked: dict[str, str] = {}
    if original is not None:
        for where, _, elem in _iter_elements(original):
            if int(elem.tag) in _TABLE and elem.tag not in _KEEP_ALWAYS:
                if elem.VR not in _LEAK_VRS:
                    continue
                for v in _values(elem):
                    if v not in _DUMMY_VALUES and len(v) >= 3:
                        leaked.setdefault(v, where)
        # a value the original also holds in attributes the profile retains (Manufacturer "TOSHIBA" and
        # InstitutionName "TOSHIBA", BodyPartExamined "HEAD" and StudyDescription "HEAD") is no leak
        meta = getattr(original, "file_meta", None)
        for source in (original, meta) if meta is not None else (original,):
            for _, _, elem in _iter_elements(source):
                tag = elem.tag
                if int(tag) not in _TABLE and not tag.is_private and not _is_curve_or_overlay(tag):
                    for v in _values(elem):
                        leaked.pop(v, None)
    # long free-text values (names, IDs, addresses) are also looked for inside other strings
    embedded = {v: w for v, w in leaked.items() if len(v) >= 6 and not v[0].isdigit()}
    sources = [ds]
    if getattr(ds, "file_meta", None) is not None:
        sources.append(ds.file_meta)
    for source in sources:
        for where, _, elem in _iter_elements(source):
            tag = elem.tag
            values = _values(elem) if tag not in _KEEP_ALWAYS else []
            for v in values:
                hit = leaked.get(v) or next((w for s, w in embedded.items() if s in v), None)
                if hit:
                    found.append(f"{where}: holds the original value of {hit}")
                    break
            if tag.is_private:
                if not allow_private:
                    found.append(f"{where}: private attribute")
                continue
            if _is_curve_or_overlay(tag):
                found.append(f"{where}: curve/overlay data")
                continue
            action = _TABLE.get(int(tag))
            if elem.VR == "SQ":
                if action is not None and action not in ("U", "X/Z/U*") and elem.value:
                    found.append(f"{where}: sequence still has items (Table E.1-1 action {action})")
                continue
            if action is None or action in ("U", "X/Z/U*") or tag in _KEEP_ALWAYS or not values:
                continue
            if tag in (_PATIENT_ID, _PATIENT_NAME) and all(_PSEUDONYM_RE.match(v) for v in values):
                continue
            if dates_modified and elem.VR in ("DA", "DT", "TM"):
                continue
            if all(v in _DUMMY_VALUES for v in values):
                continue
            found.append(f"{where}: still holds a value (Table E.1-1 action {action})")
    return found
