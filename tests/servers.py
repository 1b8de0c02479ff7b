"""Real servers for integration tests, started from their Debian packages on 127.0.0.1 and a free port.

Each helper is a context manager that starts the server with its own configuration in a
temporary folder (nothing of the machine's own service is used or touched), waits until it
answers, yields how to reach it, and stops it afterwards. A server that fails to start raises
``ServerError`` with the tail of its log, so a broken fixture says why.

    with redis_server(tmp_path) as url:   # "redis://127.0.0.1:PORT/0"
        ...

    with orthanc_server(tmp_path) as orthanc:   # .url, .dicom_port, .aet, .dicomweb_url
        ...
"""

from __future__ import annotations

import functools
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOCALHOST = "127.0.0.1"


class ServerError(RuntimeError):
    """A test server did not start or did not answer in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def missing_binary(name: str) -> str | None:
    """None when ``name`` is on PATH, else a skip reason naming the Debian package to install."""
    if shutil.which(name):
        return None
    return f"needs {name} on PATH (Debian/Ubuntu: apt-get install {name})"


def _log_tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextmanager
def running_process(
    args: list[str],
    *,
    log: Path,
    ready: Callable[[], bool],
    timeout: float = 15.0,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``args``, wait until ``ready()`` is true, yield the process, then stop it.

    Args:
        args: the command line.
        log: file that receives the process's stdout and stderr.
        ready: polled every 50 ms; True once the server answers.
        timeout: seconds to wait for ``ready``.
        cwd: working folder of the process.

    Raises:
        ServerError: the process exited early or was not ready within ``timeout``.
    """
    with log.open("wb") as sink:
        proc = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                code = proc.returncode
                raise ServerError(f"{args[0]} exited with {code} before it was ready:\n{_log_tail(log)}")
            if time.monotonic() > deadline:
                raise ServerError(f"{args[0]} was not ready after {timeout:.0f}s:\n{_log_tail(log)}")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def redis_ping(port: int, host: str = LOCALHOST) -> bool:
    """Whether a Redis server on ``host:port`` answers PING (raw RESP, no client library needed)."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server(workdir: Path, *, binary: str = "redis-server", attempts: int = 3) -> Iterator[str]:
    """A throwaway ``redis-server`` with no persistence; yields ``redis://127.0.0.1:PORT/0``.

    Args:
        workdir: folder for its config, log and working directory (e.g. a pytest tmp path).
        binary: the server executable.
        attempts: tries with a new free port, in case another process takes the port first.

    Raises:
        ServerError: the binary is missing or the server would not start.
    """
    if shutil.which(binary) is None:
        raise ServerError(missing_binary(binary) or binary)
    workdir.mkdir(parents=True, exist_ok=True)
    last: ServerError | None = None
    with ExitStack() as stack:
        for attempt in range(attempts):
            port = free_port()
            config = workdir / f"redis-{port}.conf"
            config.write_text(
                "\n".join(
                    [
                        f"port {port}",
                        f"bind {LOCALHOST}",
                        f"dir {workdir}",
                        'save ""',
                        "appendonly no",
                        "daemonize no",
                        "protected-mode yes",
                        "",
                    ]
                )
            )
            log = workdir / f"redis-{port}-{attempt}.log"
            try:
                ready = functools.partial(redis_ping, port)
                stack.enter_context(running_process([binary, str(config)], log=log, ready=ready))
                break
            except ServerError as err:
                last = err
        else:
            raise ServerError(f"{binary} did not start after {attempts} attempts: {last}")
        yield f"redis://{LOCALHOST}:{port}/0"


ORTHANC_PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")


@dataclass(frozen=True)
class OrthancServer:
    """How to reach a running test Orthanc.

    Args:
        url: Its REST API, ``http://127.0.0.1:PORT``.
        dicom_port: Its DICOM (DIMSE) port on 127.0.0.1.
        aet: Its AE title.
        dicomweb_url: The DICOMweb root (``<url>/dicom-web``), or None without the plugin.
        storage: Its storage folder.
    """

    url: str
    dicom_port: int
    aet: str
    dicomweb_url: str | None
    storage: Path
    host: str = LOCALHOST

    def get(self, path: str) -> Any:
        """GET ``path`` (e.g. ``/series``) from the REST API and decode the JSON answer."""
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def add_modality(self, name: str, aet: str, port: int, host: str = LOCALHOST) -> None:
        """Declare (or replace) a DICOM peer that Orthanc may C-MOVE and C-STORE to."""
        body = json.dumps({"AET": aet, "Host": host, "Port": port}).encode()
        request = urllib.request.Request(self.url + f"/modalities/{name}", data=body, method="PUT")
        with urllib.request.urlopen(request, timeout=10):
            pass


def orthanc_binary(name: str = "Orthanc") -> str | None:
    """Path of the Orthanc executable (Debian installs it in /usr/sbin, not always on PATH)."""
    found = shutil.which(name)
    if found:
        return found
    fallback = Path("/usr/sbin") / name
    return str(fallback) if fallback.is_file() else None


def dicomweb_plugin() -> Path | None:
    """The DICOMweb plugin library of the Debian package ``orthanc-dicomweb``, or None."""
    for folder in ORTHANC_PLUGIN_DIRS:
        hits = sorted(Path(folder).glob("libOrthancDicomWeb.so*"))
        if hits:
            return hits[0]
    return None


def orthanc_system(url: str) -> bool:
    """Whether the Orthanc REST API at ``url`` answers ``/system``."""
    try:
        with urllib.request.urlopen(url + "/system", timeout=0.5) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def orthanc_server(
    workdir: Path,
    *,
    aet: str = "ORTHANC",
    listeners: dict[str, tuple[str, int]] | None = None,
    binary: str = "Orthanc",
    attempts: int = 3,
) -> Iterator[OrthancServer]:
    """A throwaway Orthanc with its own storage, free HTTP and DICOM ports and DICOMweb when installed.

    Orthanc 1.10 has no bind-address option and listens on all interfaces; remote access to its REST
    API is off and tests talk to 127.0.0.1 only. Any calling AE may echo, store, find, move and get.

    Args:
        workdir: Folder for its config, log and storage (e.g. a pytest tmp path).
        aet: Its AE title.
        listeners: ``{name: (AE title, port)}`` of DICOM peers on 127.0.0.1 that it may C-MOVE and
            C-STORE to (more can be added later with ``OrthancServer.add_modality``).
        binary: The server executable.
        attempts: Tries with new free ports, in case another process takes a port first.

    Raises:
        ServerError: The binary is missing or the server would not start.
    """
    exe = orthanc_binary(binary)
    if exe is None:
        raise ServerError(f"needs {binary} (Debian/Ubuntu: apt-get install orthanc orthanc-dicomweb)")
    plugin = dicomweb_plugin()
    workdir.mkdir(parents=True, exist_ok=True)
    last: ServerError | None = None
    with ExitStack() as stack:
        for attempt in range(attempts):
            http_port, dicom_port = free_port(), free_port()
            storage = workdir / f"orthanc-{http_port}"
            config: dict[str, Any] = {
                "Name": f"test-{http_port}",
                "StorageDirectory": str(storage),
                "IndexDirectory": str(storage),
                "HttpPort": http_port,
                "DicomPort": dicom_port,
                "DicomAet": aet,
                "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False,
                "SslEnabled": False,
                "DicomCheckCalledAet": False,
                "DicomAlwaysAllowEcho": True,
                "DicomAlwaysAllowStore": True,
                "DicomAlwaysAllowFind": True,
                "DicomAlwaysAllowMove": True,
                "DicomAlwaysAllowGet": True,
                "DicomModalities": {
                    name: [ae, LOCALHOST, port] for name, (ae, port) in (listeners or {}).items()
                },
                "DicomModalitiesInDatabase": False,
                "SaveJobs": False,
                "StorageCompression": False,
                "SyncStorageArea": False,
                "Plugins": [str(plugin)] if plugin else [],
                "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            }
            path = workdir / f"orthanc-{http_port}.json"
            path.write_text(json.dumps(config, indent=2))
            log = workdir / f"orthanc-{http_port}-{attempt}.log"
            url = f"http://{LOCALHOST}:{http_port}"
            try:
                ready = functools.partial(orthanc_system, url)
                # DCMTK inside Orthanc keeps Nagle's algorithm on unless TCP_NODELAY=1: ~50 ms per C-STORE
                args = ["env", "TCP_NODELAY=1", exe, str(path)]
                stack.enter_context(running_process(args, log=log, ready=ready, timeout=30))
                break
            except ServerError as err:
                last = err
        else:
            raise ServerError(f"{binary} did not start after {attempts} attempts: {last}")
        dicomweb = f"{url}/dicom-web" if plugin else None
        yield OrthancServer(url=url, dicom_port=dicom_port, aet=aet, dicomweb_url=dicomweb, storage=storage)
