"""A DICOM storage SCP (pynetdicom 3) that files incoming instances by series and reports complete series.

``StorageSCP`` accepts any storage SOP class (CT, SEG, SR, ...) and writes each instance to
``storage_dir/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` (a resent instance
overwrites its file). A series is complete once every association that delivered to it has ended
and nothing new arrived for ``settle_seconds``; it is then handed to ``on_series(folder,
series_uid)`` in a worker thread, so the SCP keeps accepting while the callback runs.

Example::

    with StorageSCP(Path("incoming"), on_series=print, port=11112) as scp:
        PacsClient("ORTHANC@127.0.0.1:4242").move_series(study_uid, series_uid, destination=scp.ae_title)
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from connectors.dicom.pacs import PacsError, PacsNode, _check_aet, _no_delay, _write_atomic, safe_uid

log = logging.getLogger(__name__)


@dataclass
class _Series:
    folder: Path
    associations: set[int]
    last: float
    instances: set[str] = field(default_factory=set)


class StorageSCP:
    """A storage SCP that files what it receives by study and series and reports complete series.

    Args:
        storage_dir: Root folder for received instances (created).
        on_series: Called as ``on_series(folder, series_uid)`` in a worker thread, once per
            completed series; an exception is logged with the series UID and the SCP carries on.
        ae_title: Our AE title; peers must call it (``require_called_aet``).
        host: Address to listen on (loopback by default).
        port: TCP port; 0 picks a free one (see ``port`` after ``start``).
        settle_seconds: Quiet time after the last association delivering to a series has ended
            before the series counts as complete.
        require_called_aet: Reject associations that call another AE title.
    """

    def __init__(
        self,
        storage_dir: Path,
        on_series: Callable[[Path, str], object] | None = None,
        *,
        ae_title: str = "FATHOM",
        host: str = "127.0.0.1",
        port: int = 0,
        settle_seconds: float = 3.0,
        require_called_aet: bool = True,
    ) -> None:
        _check_aet(ae_title)
        if settle_seconds < 0:
            raise ValueError(f"settle_seconds must be >= 0, got {settle_seconds}")
        if not 0 <= port < 65536:
            raise ValueError(f"port {port} is not in 0..65535")
        self.storage_dir = Path(storage_dir)
        self.on_series = on_series
        self.ae_title, self.host, self.port = ae_title, host, port
        self.settle_seconds = float(settle_seconds)
        self.require_called_aet = require_called_aet
        self.completed: list[str] = []  # series UIDs handed to on_series, in order
        self._series: dict[tuple[str, str], _Series] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[Path, str] | None] = queue.Queue()
        self._busy = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server = None

    @property
    def node(self) -> PacsNode:
        """Where peers reach this SCP."""
        return PacsNode(self.host, self.port, self.ae_title)

    def start(self) -> StorageSCP:
        """Start listening and the watcher and worker threads. Raises ``PacsError`` if it cannot bind."""
        if self._server is not None:
            return self
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = self.require_called_aet
        ae.maximum_associations = 16
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_OPEN, _no_delay)] + [
            (event, self._on_end) for event in (evt.EVT_RELEASED, evt.EVT_ABORTED, evt.EVT_CONN_CLOSE)
        ]
        try:
            self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        except OSError as e:
            raise PacsError(
                f"{self.ae_title}: cannot listen on {self.host}:{self.port}: {e.strerror or e}"
            ) from e
        self.port = int(self._server.server_address[1])
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._watch, name=f"{self.ae_title}-settle", daemon=True),
            threading.Thread(target=self._work, name=f"{self.ae_title}-series", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        log.info("storage SCP %s listening", self.node)
        return self

    def stop(self) -> None:
        """Stop accepting, let a running callback finish, and log series that had not settled."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server = None
        self._stop.set()
        self._threads[0].join()  # the watcher queues nothing more
        self._queue.put(None)  # series queued before it are still handled
        self._threads[1].join()
        with self._lock:
            for (_, uid), st in self._series.items():
                log.warning(
                    "stopped before series %s settled: %d file(s) in %s", uid, len(st.instances), st.folder
                )
            self._series.clear()

    def __enter__(self) -> StorageSCP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def pending(self) -> dict[str, int]:
        """``{series UID: instances received}`` of series still receiving or settling."""
        with self._lock:
            return {key[1]: len(st.instances) for key, st in self._series.items()}

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no series is pending or queued and no callback runs; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._series and self._queue.empty() and not self._busy:
                    return True
            time.sleep(0.05)
        return False

    def _on_store(self, event: evt.Event) -> int:
        sop = str(event.request.AffectedSOPInstanceUID)
        try:
            ds = event.dataset
            study, series = str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))
        except Exception as e:  # a peer's malformed dataset must not take the SCP down
            log.warning("instance %s from %s: cannot decode (%s)", sop, event.assoc.requestor.ae_title, e)
            return 0xC210
        if not study or not series:
            log.warning("instance %s: missing StudyInstanceUID or SeriesInstanceUID, refused", sop)
            return 0xA900
        folder = self.storage_dir / safe_uid(study) / safe_uid(series)
        try:
            _write_atomic(folder / f"{safe_uid(sop)}.dcm", event.encoded_dataset())
        except OSError as e:
            log.error("instance %s of series %s: cannot write (%s)", sop, series, e)
            return 0xA700
        with self._lock:
            st = self._series.setdefault((study, series), _Series(folder, set(), 0.0))
            st.associations.add(id(event.assoc))
            st.instances.add(sop)
            st.last = time.monotonic()
        return 0x0000

    def _on_end(self, event: evt.Event) -> None:
        key, now = id(event.assoc), time.monotonic()
        with self._lock:
            for st in self._series.values():
                if key in st.associations:
                    st.associations.discard(key)
                    st.last = max(st.last, now)

    def _watch(self) -> None:
        interval = min(0.1, max(self.settle_seconds / 4, 0.01))
        while not self._stop.wait(interval):
            now = time.monotonic()
            with self._lock:
                done = [
                    key
                    for key, st in self._series.items()
                    if not st.associations and now - st.last >= self.settle_seconds
                ]
                for key in done:
                    st = self._series.pop(key)
                    log.info("series %s complete: %d instance(s)", key[1], len(st.instances))
                    self.completed.append(key[1])
                    self._busy += 1
                    self._queue.put((st.folder, key[1]))

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            folder, series_uid = item
            try:
                if self.on_series is not None:
                    self.on_series(folder, series_uid)
            except Exception:
                log.exception("on_series failed for series %s (files kept in %s)", series_uid, folder)
            finally:
                with self._lock:
                    self._busy -= 1


__all__ = ["StorageSCP"]
