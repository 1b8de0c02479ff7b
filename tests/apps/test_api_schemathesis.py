"""apps.api against its own OpenAPI spec: schemathesis generates requests for every operation.

Each operation of ``/openapi.json`` (customer service, fraud, nodules, ``/healthz``) gets a small,
derandomized Hypothesis run with the API key sent, over a cheap but real app: the fake assistant of
the customer-service tests, the shipped fraud model with a fresh alert store, an untrained tiny nodule
model. No response may be a 5xx; every one must be documented (status code, content type, headers,
body schema); schema-valid requests must not be refused, schema-violating ones must be.
"""

from __future__ import annotations

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from apps.api import create_api
from tests.apps.customer_service.test_api import FakeAssistant

KEY = "schemathesis-key"
HEADERS = {"X-API-Key": KEY}
OPERATIONS = {
    "POST /cs/ask",
    "GET /cs/sessions/{session_id}",
    "POST /fraud/score",
    "GET /fraud/alerts",
    "GET /fraud/alerts/summary",
    "GET /fraud/alerts/{transaction_id}",
    "POST /fraud/alerts/{transaction_id}/decision",
    "POST /nodule/detect",
    "GET /nodule/results/{result_id}/{kind}",
    "GET /healthz",
}
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20260401,
        # schemathesis's default lists plus 413: the app's body-size limit (documented on every route)
        # refuses a body over it, schema-valid or not (e.g. a batch of 10,000 transactions, > 1 MiB).
        "checks": {
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "3xx", "401", "403", "404", "409", "413", "429", "5xx"]
            },
            "negative_data_rejection": {
                "expected-statuses": [
                    *("400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"),
                    "5xx",
                ]
            },
        },
    }
)
# Schema-valid but not a CT study: any bytes fit the spec's file parts, the route wants DICOM (415).
CONTENT_CHECKED = {"POST /nodule/detect"}


def tiny_nodule_detector():
    """An untrained tiny model on the CPU: the route's real detector, without the shipped weights."""
    from apps.nodule.detect import NoduleDetector
    from apps.nodule.model import NoduleModel, NoduleNetConfig

    return NoduleDetector(NoduleModel.create(NoduleNetConfig.tiny()), device="cpu")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    """The suite's app with the key set, over the cheap real resources (built on first use)."""
    from apps.fraud.alerts import AlertStore
    from apps.fraud.service import FraudScorer

    tmp = tmp_path_factory.mktemp("schemathesis")
    return create_api(
        KEY,
        assistant_factory=FakeAssistant,
        fraud_scorer_factory=lambda: FraudScorer.load(None),
        fraud_alerts_factory=lambda: AlertStore.open(tmp / "alerts.db"),
        nodule_detector_factory=tiny_nodule_detector,
        nodule_results_dir=tmp / "results",
    )


# The spec is read at import (schemathesis parametrizes from it) from an app that is never called:
# the spec does not depend on the resources, and the requests go to the ``app`` fixture.
# (``schemathesis.pytest.from_fixture`` would do both, but fails on pytest 9: no ``Function._nodeid``.)
schema = schemathesis.openapi.from_asgi("/openapi.json", create_api(KEY), config=CONFIG)


def test_the_spec_covers_every_operation(app: FastAPI) -> None:
    assert app.openapi() == schema.raw_schema
    assert {result.ok().label for result in schema.get_all_operations()} == OPERATIONS


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
def test_every_operation_conforms_to_the_spec(case: schemathesis.Case, app: FastAPI) -> None:
    excluded = []
    if case.operation.label in CONTENT_CHECKED:
        excluded.append(positive_data_acceptance)
    case.call_and_validate(app=app, headers=HEADERS, excluded_checks=excluded)
