"""Fathom's Streamlit front end: one multipage app (``apps/ui/app.py``) over every app's page.

This module does not import Streamlit: the CLI (``fathom ui``) only needs the script's path and
the command that runs it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main_path() -> Path:
    """The multipage entry script, as ``streamlit run`` takes it."""
    return Path(__file__).resolve().parent / "app.py"


def streamlit_command(host: str = "127.0.0.1", port: int = 8501, *, headless: bool = True) -> list[str]:
    """The command line that serves the UI (with this interpreter, so the same environment).

    Args:
        host: interface to bind.
        port: TCP port, 1-65535.
        headless: do not try to open a browser.

    Returns:
        ``[python, "-m", "streamlit", "run", <app.py>, ...]``; usage statistics are off (no internet).

    Raises:
        ValueError: a port outside 1-65535 or an empty host.
    """
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port must be an integer in 1-65535, got {port!r}")
    if not host or not host.strip():
        raise ValueError("host is empty")
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(main_path()),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true" if headless else "false",
        "--browser.gatherUsageStats",
        "false",
    ]


def launch(host: str = "127.0.0.1", port: int = 8501, *, headless: bool = True) -> int:
    """Serve the UI until interrupted (what ``fathom ui`` runs).

    Args:
        host: interface to bind.
        port: TCP port.
        headless: do not try to open a browser.

    Returns:
        Streamlit's exit code.
    """
    return subprocess.call(streamlit_command(host, port, headless=headless))
