"""Every page of the Streamlit app in a real browser: ``streamlit run apps/ui/app.py`` on 127.0.0.1 and
Debian's headless Chromium driven by Playwright (``executable_path=/usr/bin/chromium``, no browser
download). Screenshots go to ``test-artifacts/ui_browser/``.

The server gets its own cache folder, a fraud alert store filled by scoring a small simulated
transactions file with the shipped fraud model (what ``fathom fraud score --alerts`` does), and a tiny
untrained nodule model (``FATHOM_NODULE_MODEL``). Skips with the reason when Chromium or Playwright
is missing (``apt-get install chromium``; ``pip install playwright``, no ``playwright install``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from apps.ui import streamlit_command
from core.config import models_dir
from tests.servers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = os.environ.get("FATHOM_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui_browser"
START_TIMEOUT_S = 60
ACTION_TIMEOUT_MS = 60_000


def _missing() -> str | None:
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        return f"needs Chromium at {CHROMIUM} (Debian/Ubuntu: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "needs Playwright (pip install playwright; the browser is Debian's chromium, no download)"
    return None


@pytest.fixture(scope="module")
def server_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """FATHOM_* for the server: a private cache, a filled alert store, a tiny nodule model."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    import torch

    from apps.fraud.alerts import AlertStore
    from apps.fraud.service import FraudScorer, alerts_from_frame
    from apps.fraud.simulate import simulate
    from apps.nodule.model import NoduleModel, NoduleNetConfig

    root = tmp_path_factory.mktemp("ui_browser")
    env = {
        "FATHOM_CACHE_DIR": str(root / "cache"),
        "FATHOM_FRAUD_ALERTS": str(root / "alerts.db"),
        "FATHOM_FRAUD_SCORES": str(root / "scores.db"),
        "FATHOM_NODULE_MODEL": str(root / "nodule-model"),
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = NoduleNetConfig(**{**NoduleNetConfig.tiny().to_dict(), "report_threshold": 0.01})
        NoduleModel.create(cfg).save(root / "nodule-model", name="tiny-browser-test", metrics={}, summary="t")
        if (models_dir("fraud-detector") / "model_card.json").is_file():
            df = simulate(10, 12, 4, seed=3, fraud_rate=0.05)
            scorer = FraudScorer.load(None, threshold=0.0)  # every transaction alerts: a full queue
            with AlertStore.open(env["FATHOM_FRAUD_ALERTS"]) as store:
                store.add_many(alerts_from_frame(scorer.score_frame(df), scorer))
    finally:
        torch.set_num_threads(threads)
    return env


@pytest.fixture(scope="module")
def ui_url(server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``streamlit run apps/ui/app.py`` on 127.0.0.1 and a free port, headless; its base URL."""
    port = free_port()
    env = {
        **os.environ,
        **server_env,
        "OMP_NUM_THREADS": "1",  # one torch thread in the server: the machine is shared
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            streamlit_command("127.0.0.1", port), env=env, stdout=out, stderr=subprocess.STDOUT
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"streamlit exited ({proc.returncode}): {log.read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                        if response.read().strip() == b"ok":
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"streamlit did not start in {START_TIMEOUT_S} s: {log.read_text()[-2000:]}")
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def browser(ui_url: str):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, request: pytest.FixtureRequest):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(ACTION_TIMEOUT_MS)
    yield pg
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()


def _open(page, url: str, title: str) -> None:
    page.goto(url)
    page.get_by_role("heading", name=title).first.wait_for()
    _idle(page)


def _idle(page, timeout_ms: int = ACTION_TIMEOUT_MS) -> None:
    """Wait until the script run is over (Streamlit shows a running widget while it runs)."""
    page.wait_for_timeout(300)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=timeout_ms)


def _no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, page.inner_text("body")[:3000]


def test_home_lists_models_and_backends(page, ui_url: str) -> None:
    _open(page, ui_url, "Fathom")
    for heading in ("Loaded in this server", "Models", "Backends"):
        page.get_by_role("heading", name=heading).first.wait_for()
    page.locator('[data-testid="stDataFrame"]').nth(1).wait_for()  # models, backends
    body = page.inner_text("body")
    assert "Each checked within" in body and "Nodule detector" in body
    nav = page.locator('[data-testid="stSidebarNav"]').inner_text()
    for name in ("Home", "Customer service", "Fraud alerts", "Lung nodules", "Models & drift"):
        assert name in nav
    _no_exception(page)


def test_customer_service_answers_with_a_citation(page, ui_url: str) -> None:
    _open(page, f"{ui_url}/customer-service", "Customer service")
    box = page.get_by_placeholder("Ask about cards, payments, transfers...")
    box.fill("How long does it take for a new card to arrive?")
    box.press("Enter")
    messages = page.locator('[data-testid="stChatMessage"]')
    messages.nth(1).wait_for()
    _idle(page)
    reply = messages.nth(1)
    assert "How long does it take" in messages.nth(0).inner_text()
    assert "Intent:" in reply.inner_text()
    sources = reply.get_by_text(re.compile(r"Sources \(\d+\)"))
    sources.click()
    first = reply.get_by_text(re.compile(r"^1\. ")).first
    first.wait_for()
    assert "score" in reply.inner_text()
    _no_exception(page)


@pytest.mark.skipif(not (models_dir("fraud-detector") / "model_card.json").is_file(), reason="no fraud model")
def test_fraud_page_shows_the_alert_queue(page, ui_url: str) -> None:
    _open(page, f"{ui_url}/fraud", "Fraud alerts")
    page.locator('[data-testid="stMetric"]').first.wait_for()
    metrics = page.locator('[data-testid="stMetric"]').all_inner_texts()
    open_metric = next(m for m in metrics if m.startswith("Open"))
    assert int(re.findall(r"\d+", open_metric)[0]) > 0, metrics
    page.locator('[data-testid="stDataFrame"]').first.wait_for()
    assert "Decide alert" in page.inner_text("body")
    page.get_by_label("Analyst", exact=True).fill("browser-test")
    page.get_by_role("button", name="Record decision").click()
    page.get_by_text(re.compile(r"Alert \S+ marked \w+ by browser-test")).wait_for()
    _idle(page)
    _no_exception(page)


def test_nodule_page_makes_a_sample_and_finds_nodules(page, ui_url: str) -> None:
    _open(page, f"{ui_url}/nodule", "Lung nodules")
    page.get_by_role("button", name="Make a sample phantom study").click()
    field = page.get_by_label("Study folder (DICOM files, sub-folders or a DICOMDIR)")
    page.wait_for_function(
        "() => [...document.querySelectorAll('input')].some(i => i.value.endsWith('/dicom'))",
        timeout=ACTION_TIMEOUT_MS,
    )
    assert field.input_value().endswith("nodule/sample/dicom")
    _idle(page)
    page.get_by_role("button", name="Analyse", exact=True).click()
    found = page.get_by_role("heading", name=re.compile(r"nodule\(s\) found|No nodule found"))
    found.wait_for(timeout=120_000)
    _idle(page)
    assert "tiny-browser-test" in page.inner_text("body")  # the model of FATHOM_NODULE_MODEL
    if "No nodule" not in found.inner_text():
        page.locator('[data-testid="stDataFrame"]').first.wait_for()
    # axial, coronal, sagittal: the views render after the heading, so wait for the third one
    page.locator('[data-testid="stImage"]').nth(2).wait_for(timeout=60_000)
    assert page.locator('[data-testid="stImage"]').count() >= 3
    _no_exception(page)


def test_models_page_lists_the_shipped_models(page, ui_url: str) -> None:
    _open(page, f"{ui_url}/models", "Models & drift")
    page.locator('[data-testid="stDataFrame"]').first.wait_for()
    _no_exception(page)
