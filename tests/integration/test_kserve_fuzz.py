"""The TorchServe fuzz (tests/integration/test_server_fuzz.py's bodies and content types) against the
KServe server, on every route that reads a body: TorchServe's /predictions and /explanations, KServe
v1 :predict/:explain and v2 infer/explain. Every request gets an answer or a 4xx, never a 5xx (the
KServe server has no frontend of its own that refuses a form: it must decode every body itself), and
the one process that serves them is the one that started (its single model load, the same answer)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imdb_ops.serve_kserve import running
from tests.helpers import REPO, SHIPPED
from tests.integration.test_server_fuzz import bodies, content_types

pytestmark = pytest.mark.integration
MODEL = "imdb_sentiment"
ROUTES = (
    f"/predictions/{MODEL}",
    f"/explanations/{MODEL}",
    f"/v1/models/{MODEL}:predict",
    f"/v1/models/{MODEL}:explain",
    f"/v2/models/{MODEL}/infer",
    f"/v2/models/{MODEL}/explain",
)
PROBE = "A wonderful film, moving and beautifully acted."


FIRST: dict[str, dict] = {}  # the probe's answer right after the start, by server URL


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running(SHIPPED, "--config", str(REPO / "model-config.yaml"), "--version", "1.0") as url:
        first = requests.post(url + f"/explanations/{MODEL}", data=PROBE.encode(), timeout=60)
        assert first.status_code == 200
        FIRST[url] = first.json()
        yield url


def post(url: str, route: str, body: bytes, content_type: str | None) -> requests.Response:
    headers = {"Content-Type": content_type} if content_type else {}
    return requests.post(url + route, data=body, headers=headers, timeout=60)


def worker_starts(url: str) -> float:
    lines = requests.get(url + "/metrics", timeout=10).text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("imdb_worker_starts_total{"))


@pytest.mark.parametrize("body", [b"text=good%", b"text=%ZZ", b"=x", b"text=%E9t%E9"])
def test_a_malformed_form_is_answered_without_a_5xx(url: str, body: bytes) -> None:
    """The bodies TorchServe's frontend answers 500 (ErrorDataDecoderException): a 4xx or an answer here."""
    r = post(url, f"/predictions/{MODEL}", body, "application/x-www-form-urlencoded")
    assert r.status_code < 500, (r.status_code, r.text[:300])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, content_type=content_types, route=st.sampled_from(ROUTES))
def test_fuzzed_requests_never_get_a_5xx(url: str, body: bytes, content_type: str | None, route: str) -> None:
    r = post(url, route, body, content_type)
    assert r.status_code < 500, (route, body[:80], content_type, r.status_code, r.text[:300])


def test_the_server_survived_the_fuzz(url: str) -> None:
    """One model load in the process's life, ready, and the probe review answered as at the start."""
    assert worker_starts(url) == 1
    assert requests.get(url + "/v2/health/ready", timeout=10).status_code == 200
    again = requests.post(url + f"/explanations/{MODEL}", data=PROBE.encode(), timeout=60).json()
    assert again == FIRST[url]
