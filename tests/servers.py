"""Real servers for integration tests, started from their Debian packages on 127.0.0.1 and a free port.

Each helper is a context manager that starts the server with its own configuration in a
temporary folder (nothing of the machine's own service is used or touched), waits until it
answers, yields how to reach it, and stops it afterwards. A server that fails to start raises
``ServerError`` with the tail of its log, so a broken fixture says why.

    with redis_server(tmp_path) as url:   # "redis://127.0.0.1:PORT/0"
        ...
"""

from __future__ import annotations

import functools
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

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
