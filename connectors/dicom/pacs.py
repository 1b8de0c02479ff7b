"""PACS over DIMSE (pynetdicom 3): an SCU for echo, find, move, get and store.

- ``PacsNode``: a peer, parsed from ``"AET@host:port"``.
- ``PacsClient``: C-ECHO, C-FIND (Study Root, study and series level), C-MOVE and C-GET of a
  series, C-STORE of files or datasets with a per-instance status. A refused, rejected, aborted or
  timed-out association raises ``PacsError`` naming the peer and the reason.
- The storage SCP that receives series is ``connectors.dicom.scp.StorageSCP``.

Example::

    with StorageSCP(Path("incoming"), on_series=print, port=11112) as scp:
        client = PacsClient("ORTHANC@127.0.0.1:4242")
        client.move_series(study_uid, series_uid, destination=scp.ae_title)
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    EnhancedCTImageStorage,
    SegmentationStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.status import QR_GET_SERVICE_CLASS_STATUS, QR_MOVE_SERVICE_CLASS_STATUS, code_to_category
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS as _STORE_STATUS

log = logging.getLogger(__name__)

__all__ = ["PacsClient", "PacsError", "PacsNode", "RetrieveResult", "StoreError", "StoreResult"]

_SR_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.88.22",
    "1.2.840.10008.5.1.4.1.1.88.33",
    "1.2.840.10008.5.1.4.1.1.88.34",
)
#: SOP classes that ``PacsClient.get_series`` accepts by default: CT, SEG and the SR classes we write.
GET_SOP_CLASSES = (CTImageStorage, EnhancedCTImageStorage, SegmentationStorage, *_SR_CLASSES)
_STUDY_KEYS = ("StudyInstanceUID", "PatientID", "StudyDate", "StudyDescription", "AccessionNumber",
               "ModalitiesInStudy", "NumberOfStudyRelatedSeries")  # fmt: skip
_SERIES_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
                "NumberOfSeriesRelatedInstances")  # fmt: skip
_AET_BAD = re.compile(r"[\\\x00-\x1f]")


class PacsError(RuntimeError):
    """A DICOM network operation failed; the message names the peer and the reason."""


@dataclass(frozen=True)
class PacsNode:
    """A DICOM application entity on the network.

    Args:
        host: Host name or IP address.
        port: TCP port (1-65535).
        ae_title: AE title (1-16 characters, no backslash or control characters).
    """

    host: str
    port: int
    ae_title: str

    def __post_init__(self) -> None:
        _check_aet(self.ae_title)
        if not self.host or any(c.isspace() for c in self.host):
            raise ValueError(f"host {self.host!r} is empty or contains spaces")
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ValueError(f"port {self.port!r} is not in 1..65535")

    @classmethod
    def parse(cls, text: str) -> PacsNode:
        """Parse ``"AET@host:port"`` (IPv6 hosts in brackets: ``"AET@[::1]:104"``).

        Raises:
            ValueError: Naming the part of ``text`` that is missing or invalid.
        """
        aet, at, rest = text.strip().rpartition("@")
        if not at:
            raise ValueError(
                f"{text!r}: expected AET@host:port, the '@' between AE title and host is missing"
            )
        host, colon, port = rest.rpartition(":")
        if not colon or not host:
            raise ValueError(f"{text!r}: expected AET@host:port, the host or ':port' is missing")
        if not port.isdigit():
            raise ValueError(f"{text!r}: port {port!r} is not a number")
        try:
            return cls(host.strip("[]"), int(port), aet)
        except ValueError as e:
            raise ValueError(f"{text!r}: {e}") from None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"


def _check_aet(aet: str) -> None:
    if not aet or not aet.strip() or len(aet) > 16 or _AET_BAD.search(aet):
        raise ValueError(f"AE title {aet!r} must be 1-16 characters without backslash or control characters")


def _node(peer: PacsNode | str) -> PacsNode:
    return peer if isinstance(peer, PacsNode) else PacsNode.parse(peer)


@dataclass
class StoreResult:
    """Outcome of a C-STORE: SOP Instance UIDs ``stored`` (success or warning), ``{uid: reason}``
    of those ``failed`` and ``{uid: warning}`` of those stored with a warning."""

    stored: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)


class StoreError(PacsError):
    """Some instances were not stored; ``result`` says which and why."""

    def __init__(self, message: str, result: StoreResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class RetrieveResult:
    """Outcome of a C-MOVE or C-GET: the final DIMSE ``status``, the sub-operations (instances)
    ``completed``, ``failed`` and with a ``warning``, and the ``files`` written (C-GET only)."""

    status: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    files: list[Path] = field(default_factory=list)


def _status_text(code: int, table: dict) -> str:
    category, text = table.get(code, (code_to_category(code), ""))
    return f"0x{code:04X} {category}{': ' + text if text else ''}"


def safe_uid(uid: str) -> str:
    """``uid`` made safe as one path component (UIDs are digits and dots and pass unchanged)."""
    name = re.sub(r"[^0-9A-Za-z._-]", "_", str(uid).strip())[:64]
    return "_" if name in ("", ".", "..") else name


class PacsClient:
    """A DIMSE service user (SCU) talking to one peer; each call opens and releases one association.

    Args:
        peer: The PACS, as a ``PacsNode`` or ``"AET@host:port"``.
        ae_title: Our (calling) AE title.
        timeout: Seconds for connecting, association negotiation and each DIMSE response.
    """

    def __init__(self, peer: PacsNode | str, *, ae_title: str = "FATHOM", timeout: float = 30.0) -> None:
        _check_aet(ae_title)
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.peer = _node(peer)
        self.ae_title = ae_title
        self.timeout = float(timeout)

    @contextmanager
    def _association(self, contexts: Sequence[tuple[str, Sequence[str] | None]], ext_neg=None, handlers=()):
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = self.timeout
        for sop_class, syntaxes in contexts:
            if syntaxes:
                ae.add_requested_context(sop_class, list(syntaxes))
            else:
                ae.add_requested_context(sop_class)
        received: list = []
        handlers = [
            *handlers,
            (evt.EVT_ACSE_RECV, lambda event: received.append(event.primitive)),
            (evt.EVT_CONN_OPEN, _no_delay),
        ]
        p = self.peer
        assoc = ae.associate(p.host, p.port, ae_title=p.ae_title, ext_neg=ext_neg, evt_handlers=handlers)
        if not assoc.is_established:
            raise PacsError(f"{p}: {self._why(received)}")
        try:
            yield assoc
            if assoc.is_aborted or not assoc.is_established:
                raise PacsError(f"{p}: the association was aborted during the operation")
        finally:
            if assoc.is_established:
                assoc.release()
            ae.shutdown()

    def _why(self, received: list) -> str:
        for primitive in received:
            if getattr(primitive, "result", None) in (1, 2):
                return (
                    f"association rejected ({primitive.result_str}, {primitive.source_str}): "
                    f"{primitive.reason_str}"
                )
            if type(primitive).__name__ in ("A_ABORT", "A_P_ABORT"):
                return "the peer aborted the association request"
            if getattr(primitive, "result", None) == 0:
                return "the peer accepted none of the proposed presentation contexts (SOP classes)"
        try:  # no answer at all: say whether the port is closed or the peer is silent
            with socket.create_connection((self.peer.host, self.peer.port), timeout=min(self.timeout, 5.0)):
                pass
        except OSError as e:
            return f"cannot connect: {e.strerror or e}"
        return f"no answer to the association request within {self.timeout:g}s"

    def echo(self) -> None:
        """Send a C-ECHO. Raises ``PacsError`` unless the peer answers with success."""
        with self._association([(Verification, None)]) as assoc:
            status = assoc.send_c_echo()
            code = int(status.get("Status", -1)) if status else -1
        if code != 0:
            raise PacsError(f"{self.peer}: C-ECHO failed ({'no response' if code < 0 else f'0x{code:04X}'})")

    def _find(self, level: str, keys: Sequence[str], filters: dict[str, object]) -> list[Dataset]:
        query = Dataset()
        query.QueryRetrieveLevel = level
        for keyword in (*keys, *filters):
            if not pydicom.datadict.tag_for_keyword(keyword):
                raise ValueError(f"C-FIND key {keyword!r} is not a DICOM keyword")
            setattr(query, keyword, filters.get(keyword, ""))
        matches = []
        with self._association([(StudyRootQueryRetrieveInformationModelFind, None)]) as assoc:
            for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
                code = int(status.get("Status", -1)) if status else -1
                if code in (0xFF00, 0xFF01):
                    matches.append(identifier)
                elif code != 0:
                    reason = "no response" if code < 0 else f"0x{code:04X} {code_to_category(code)}"
                    raise PacsError(f"{self.peer}: C-FIND at {level} level failed ({reason})")
        return matches

    def find_studies(self, **filters: object) -> list[Dataset]:
        """C-FIND studies (Study Root). ``filters`` are DICOM keywords, e.g. ``PatientID="P1"``.

        Returns:
            One identifier per study, with the standard study keys and the filter keys.
        """
        return self._find("STUDY", _STUDY_KEYS, filters)

    def find_series(self, study_uid: str | None = None, **filters: object) -> list[Dataset]:
        """C-FIND series (Study Root), of one study or, with ``study_uid=None``, of all studies."""
        if study_uid:
            filters["StudyInstanceUID"] = study_uid
        return self._find("SERIES", _SERIES_KEYS, filters)

    def _retrieve(self, op: str, responses: Iterator, table: dict) -> RetrieveResult:
        result = RetrieveResult(status=-1)
        for status, _identifier in responses:
            if not status:
                raise PacsError(f"{self.peer}: {op} got no response within {self.timeout:g}s")
            result.status = int(status.Status)
            for name in ("completed", "failed", "warning"):
                keyword = f"NumberOf{name.capitalize()}Suboperations"
                if keyword in status:
                    setattr(result, name, int(status.get(keyword) or 0))
        if result.status < 0:
            raise PacsError(f"{self.peer}: {op} ended without a final status")
        if code_to_category(result.status) == "Failure" or result.failed:
            raise PacsError(
                f"{self.peer}: {op} failed ({_status_text(result.status, table)}); "
                f"{result.completed} sent, {result.failed} failed"
            )
        return result

    @staticmethod
    def _series_query(study_uid: str, series_uid: str) -> Dataset:
        if not study_uid or not series_uid:
            raise ValueError("study_uid and series_uid are both needed to retrieve a series")
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = series_uid
        return query

    def move_series(self, study_uid: str, series_uid: str, destination: str) -> RetrieveResult:
        """C-MOVE one series to the AE titled ``destination`` (the peer must know that AE).

        Raises:
            PacsError: The peer refused (e.g. unknown destination) or some instances failed.
        """
        _check_aet(destination)
        query = self._series_query(study_uid, series_uid)
        model = StudyRootQueryRetrieveInformationModelMove
        with self._association([(model, None)]) as assoc:
            responses = assoc.send_c_move(query, destination, model)
            return self._retrieve(
                f"C-MOVE of series {series_uid} to {destination}", responses, QR_MOVE_SERVICE_CLASS_STATUS
            )

    def get_series(
        self, study_uid: str, series_uid: str, folder: Path, *, sop_classes: Sequence[str] = GET_SOP_CLASSES
    ) -> RetrieveResult:
        """C-GET one series into ``folder`` as ``<SOPInstanceUID>.dcm`` files.

        Args:
            study_uid: Its study.
            series_uid: The series.
            folder: Where the files go (created).
            sop_classes: Storage SOP classes we accept (C-GET needs them negotiated up front).

        Returns:
            The counts and the files written.
        """
        query = self._series_query(study_uid, series_uid)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files: list[Path] = []

        def on_store(event: evt.Event) -> int:
            path = folder / f"{safe_uid(event.request.AffectedSOPInstanceUID)}.dcm"
            _write_atomic(path, event.encoded_dataset())
            files.append(path)
            return 0x0000

        model = StudyRootQueryRetrieveInformationModelGet
        contexts = [(model, None)] + [(uid, ALL_TRANSFER_SYNTAXES) for uid in sop_classes]
        roles = [build_role(uid, scp_role=True) for uid in sop_classes]
        with self._association(contexts, roles, [(evt.EVT_C_STORE, on_store)]) as assoc:
            responses = assoc.send_c_get(query, model)
            result = self._retrieve(f"C-GET of series {series_uid}", responses, QR_GET_SERVICE_CLASS_STATUS)
        result.files = files
        return result

    def store(self, items: Iterable[Path | str | Dataset]) -> StoreResult:
        """C-STORE files or datasets in one association, checking each instance's status.

        Raises:
            FileNotFoundError / pydicom.errors.InvalidDicomError: A file is missing or not DICOM.
            StoreError: The peer did not accept some instances (the message names them and why).
            PacsError: The association failed.
        """
        items = list(items)
        if not items:
            raise ValueError("nothing to store: pass DICOM files or datasets")
        headers = [_header(item) for item in items]
        contexts: dict[str, list[str]] = {}
        for ds in headers:
            syntaxes = contexts.setdefault(str(ds.SOPClassUID), [])
            ts = str(ds.file_meta.get("TransferSyntaxUID", "") or "1.2.840.10008.1.2.1")
            for uid in (ts, "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"):
                if uid not in syntaxes:
                    syntaxes.append(uid)
        if len(contexts) > 128:
            raise ValueError(f"{len(contexts)} SOP classes in one store; DICOM allows 128 per association")
        result = StoreResult()
        with self._association(list(contexts.items())) as assoc:
            for item, head in zip(items, headers, strict=True):
                sop = str(head.SOPInstanceUID)
                ds = item if isinstance(item, Dataset) else pydicom.dcmread(item)
                status = assoc.send_c_store(ds)
                code = int(status.get("Status", -1)) if status else -1
                if code < 0:
                    result.failed[sop] = "no response (association aborted or timed out)"
                    if not assoc.is_established:
                        break
                elif code_to_category(code) in ("Success", "Warning"):
                    result.stored.append(sop)
                    if code:
                        result.warnings[sop] = _status_text(code, _STORE_STATUS)
                else:
                    result.failed[sop] = _status_text(code, _STORE_STATUS)
        missing = [str(h.SOPInstanceUID) for h in headers if str(h.SOPInstanceUID) not in result.stored]
        for sop in missing:
            result.failed.setdefault(sop, "not sent: the association ended early")
        if result.failed:
            detail = "; ".join(f"{uid}: {why}" for uid, why in list(result.failed.items())[:5])
            raise StoreError(
                f"{self.peer}: {len(result.failed)} of {len(items)} instances not stored ({detail})", result
            )
        return result


def _header(item: Path | str | Dataset) -> Dataset:
    ds = item if isinstance(item, Dataset) else pydicom.dcmread(item, stop_before_pixels=True)
    for keyword in ("SOPClassUID", "SOPInstanceUID"):
        if not ds.get(keyword):
            where = "dataset" if isinstance(item, Dataset) else str(item)
            raise ValueError(f"{where}: missing {keyword}, cannot C-STORE it")
    if isinstance(item, Dataset):  # an in-memory dataset without a syntax is sent uncompressed
        if not hasattr(ds, "file_meta"):
            ds.file_meta = pydicom.dataset.FileMetaDataset()
        if not ds.file_meta.get("TransferSyntaxUID"):
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    return ds


def _no_delay(event: evt.Event) -> None:
    """Send each PDU at once: with Nagle's algorithm every C-STORE waits for a delayed ACK (~40 ms)."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)
