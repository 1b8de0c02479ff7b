"""The home page with Streamlit's AppTest: the models' cards, and each backend not configured, reachable
(a real redis-server, a SQLite alert store, a pynetdicom C-ECHO peer, a small HTTP server for DICOMweb and
the API) or unreachable (closed ports), each within its timeout."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from apps.ui import app
from core.config import models_dir
from tests.servers import free_port

ENV = ("FATHOM_REDIS_URL", "FATHOM_CS_SESSIONS", "FATHOM_FRAUD_ALERTS", "FATHOM_PACS")
ENV += ("FATHOM_DICOMWEB", "FATHOM_API_URL", "FATHOM_NODULE_MODEL", "FATHOM_FRAUD_MODEL")


def _page() -> None:
    from apps.ui import app

    app.home()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    app.cached_backends.clear()
    yield
    app.cached_backends.clear()


def home() -> AppTest:
    at = AppTest.from_function(_page, default_timeout=30).run()
    assert not at.exception, at.exception
    return at


def backends(at: AppTest) -> pd.DataFrame:
    return at.dataframe[1].value.set_index("backend")


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/healthz":
            body = b'{"status": "ok"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path.startswith("/dicom-web/studies"):
            self.send_response(204)  # QIDO-RS: no matches
            self.end_headers()
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_url() -> Iterator[str]:
    """A small HTTP server answering /healthz (the API) and /dicom-web/studies (QIDO-RS)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def echo_peer() -> Iterator[str]:
    """A pynetdicom verification SCP on 127.0.0.1: answers C-ECHO."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="ECHOSCP")
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    yield f"ECHOSCP@127.0.0.1:{port}"
    server.shutdown()


def test_models_and_backends_not_configured() -> None:
    at = home()
    assert at.title[0].value == "Fathom"
    models = at.dataframe[0].value.set_index("model")
    assert list(models.index) == ["Customer-service intent router", "Fraud model", "Nodule model"]
    if (models_dir("fraud-detector") / "model_card.json").is_file():
        fraud = models.loc["Fraud model"]
        assert fraud["name"] == "fathom-fraud-detector" and fraud["status"] == "installed"
        assert "val.auc_roc" in fraud["metrics"]
    table = backends(at)
    assert list(table.index) == ["Redis", "Alert store", "PACS (DIMSE)", "DICOMweb", "API"]
    assert (table["status"] == "not configured").all()
    assert "FATHOM_PACS" in table.loc["PACS (DIMSE)", "detail"]


def test_a_nodule_model_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "tiny-nodule"
    folder.mkdir()
    (folder / "model_card.json").write_text('{"name": "tiny-nodule", "metrics": {"val": {"cpm": 0.25}}}')
    monkeypatch.setenv("FATHOM_NODULE_MODEL", str(folder))
    models = home().dataframe[0].value.set_index("model")
    row = models.loc["Nodule model"]
    assert row["name"] == "tiny-nodule" and row["status"] == "installed" and "val.cpm 0.25" in row["metrics"]
    assert row["folder"] == str(folder)


@pytest.mark.integration
def test_every_backend_reachable(
    redis_url: str, http_url: str, echo_peer: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from apps.fraud.alerts import AlertStore

    alerts = tmp_path / "alerts.db"
    with AlertStore.open(alerts) as store:
        store.add(
            {
                "transaction_id": "t1",
                "customer_id": "c1",
                "terminal_id": "m1",
                "amount": 12.5,
                "timestamp": datetime(2024, 1, 2, tzinfo=UTC),
                "score": 0.9,
                "threshold": 0.5,
                "model": "test",
            }
        )
    monkeypatch.setenv("FATHOM_CS_SESSIONS", redis_url)  # the sessions URL stands in for FATHOM_REDIS_URL
    monkeypatch.setenv("FATHOM_FRAUD_ALERTS", str(alerts))
    monkeypatch.setenv("FATHOM_PACS", echo_peer)
    monkeypatch.setenv("FATHOM_DICOMWEB", f"{http_url}/dicom-web")
    monkeypatch.setenv("FATHOM_API_URL", http_url)
    table = backends(home())
    assert (table["status"] == "reachable").all(), table.to_dict()
    assert table.loc["Redis", "address"] == redis_url and "PING ok" in table.loc["Redis", "detail"]
    assert table.loc["Alert store", "detail"] == "1 alerts, 1 open"
    assert table.loc["PACS (DIMSE)", "detail"] == "C-ECHO ok"
    assert "QIDO-RS ok" in table.loc["DICOMweb", "detail"]
    assert table.loc["API", "detail"] == "/healthz ok"


def test_every_backend_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    closed = free_port()  # nothing listens here
    monkeypatch.setenv("FATHOM_REDIS_URL", f"redis://127.0.0.1:{closed}/0")
    monkeypatch.setenv("FATHOM_FRAUD_ALERTS", str(tmp_path / "missing.db"))
    monkeypatch.setenv("FATHOM_PACS", f"ANY@127.0.0.1:{closed}")
    monkeypatch.setenv("FATHOM_DICOMWEB", f"http://127.0.0.1:{closed}/dicom-web")
    monkeypatch.setenv("FATHOM_API_URL", f"http://127.0.0.1:{closed}")
    started = time.monotonic()
    table = backends(home())
    assert time.monotonic() - started < 15
    assert (table["status"] == "unreachable").all(), table.to_dict()
    assert "no alert store" in table.loc["Alert store", "detail"]
    assert not (tmp_path / "missing.db").exists()  # checking does not create the store


def test_a_silent_peer_times_out() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts connections, never answers
    port = listener.getsockname()[1]
    try:
        started = time.monotonic()
        rows = app.check_backends((("API", f"http://127.0.0.1:{port}"), ("Redis", "")), timeout=0.5)
        assert time.monotonic() - started < 3
    finally:
        listener.close()
    assert rows[0]["status"] == "unreachable" and rows[1]["status"] == "not configured"


def test_checks_are_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(app, "check_backends", lambda config: calls.append(config) or [])
    config = (("API", "http://127.0.0.1:1"),)
    app.cached_backends(config)
    app.cached_backends(config)
    assert len(calls) == 1
    app.cached_backends((("API", "http://127.0.0.1:2"),))  # another configuration is checked anew
    assert len(calls) == 2


def test_the_multipage_app_keeps_every_page() -> None:
    at = AppTest.from_file(str(app.__file__), default_timeout=60).run()
    assert not at.exception and at.title[0].value == "Fathom"
    pages = getattr(at, "_registered_pages", None)
    if pages is not None:
        names = [p["page_name"] for p in pages.values()]
        for name in ("Home", "Customer service", "Fraud alerts", "Lung nodules", "Models & drift"):
            assert name in names
