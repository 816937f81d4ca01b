"""Hostile and curl-shaped requests against a real TorchServe: every one gets an answer or a 4xx,
never a 5xx, and the worker process survives all of them (the same PID before and after)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.test_integration import MODEL, Client, build_store, running, scrape, serve

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs java on PATH"),
]
FORM = "application/x-www-form-urlencoded"  # curl's type for -d / --data-binary


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Client]:
    d = tmp_path_factory.mktemp("fuzz")
    store = build_store(d, batch_size=8, max_batch_delay=20)
    for client in running(d / "work", serve.isolated_config(d / "config.properties"), store):
        client.first_pids = worker_pids(client)  # the worker every test of this module must leave alive
        yield client


def worker_pids(client: Client) -> list[int]:
    r = requests.get(f"{client.server.management}/models/{MODEL}", headers=client.management_auth, timeout=10)
    return sorted(w["pid"] for m in r.json() for w in m["workers"])


def post(client: Client, kind: str, body: bytes, content_type: str | None) -> requests.Response:
    headers = {**client.auth, **({"Content-Type": content_type} if content_type else {})}
    return requests.post(f"{client.server.inference}/{kind}/{MODEL}", data=body, headers=headers, timeout=60)


@pytest.mark.parametrize(
    "body, content_type",
    [
        (b"text=great+movie", FORM),  # curl -d 'text=great+movie'
        (b"text=great movie&n_steps=8", FORM),  # options as form fields
        (b"great movie", "text/plain"),
        (b"great movie", None),
    ],
)
def test_bodies_as_curl_sends_them_are_reviews(server: Client, body: bytes, content_type: str | None) -> None:
    r = post(server, "explanations", body, content_type)
    assert r.status_code == 200, r.text
    assert r.json()["tokens"] == ["great", "movie"]


@pytest.mark.parametrize("body", [b"great movie", b'{"text": "great movie"}'])
def test_a_form_body_without_fields_gets_a_400_that_says_how_to_send_it(server: Client, body: bytes) -> None:
    # TorchServe's frontend drops the parts of a form body that have no "=": the handler gets no field.
    r = post(server, "predictions", body, FORM)
    assert r.status_code == 400 and "text=<review>" in r.json()["message"]


@pytest.mark.parametrize("content_type", ["text/plain", None, "application/json"])
def test_json_options_are_honoured_whatever_the_content_type(server: Client, content_type: str | None) -> None:
    body = json.dumps({"text": "great movie", "method": "gausslegendre", "n_steps": 8, "adaptive": False})
    r = post(server, "explanations", body.encode(), content_type)
    assert r.status_code == 200, r.text
    assert (r.json()["method"], r.json()["n_steps"]) == ("gausslegendre", 8)
    bad = post(server, "explanations", body.replace('"adaptive"', '"adaptiv"').encode(), content_type)
    assert bad.status_code == 400 and "unknown field" in bad.json()["message"]


HOSTILE = [
    json.dumps({"text": "good", "é": 1}, ensure_ascii=False).encode(),
    json.dumps({"text": "good", "😀": 1}, ensure_ascii=False).encode(),
    json.dumps({"text": "good", "a\nb": 1}).encode(),
    json.dumps({"text": "good", "n" * 70_000: 1}).encode(),
    json.dumps(
        {"inputs": [{"name": "ß", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, ensure_ascii=False
    ).encode(),
    b'{"text": "good \\ud800 movie"}',
    b'{"text": "good", "n_steps": ' + b"9" * 5000 + b"}",
]


def test_the_issue_11_reproductions_get_a_400_and_the_worker_lives(server: Client) -> None:
    before = worker_pids(server)
    for body in HOSTILE:
        r = post(server, "predictions", body, "application/json")
        assert r.status_code == 400, (body[:60], r.status_code, r.text[:200])
        assert r.reason == "Bad Request" and r.json()["code"] == 400 and r.json()["request_id"]
    assert post(server, "predictions", b"great movie", "text/plain").status_code == 200
    assert worker_pids(server) == before


@pytest.mark.parametrize("body", [b'"just a string"', b"good movie]", b'["great movie"]', b"5"])
@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8"])
def test_a_json_typed_body_that_is_not_a_json_object_is_a_400(server: Client, body: bytes, content_type: str) -> None:
    # The worker parses a JSON-typed body itself (or forwards the bytes that do not parse); the
    # handler reads the type the frontend sent with it and refuses anything but an object.
    r = post(server, "predictions", body, content_type)
    assert r.status_code == 400 and "application/json" in r.json()["message"], r.text
    assert post(server, "predictions", body, "text/plain").status_code == 200  # the same bytes as text


@pytest.mark.parametrize("body", ["\u200b\u200b\u200b".encode(), b"\x00" * 20])
def test_a_review_of_only_invisible_characters_is_a_400(server: Client, body: bytes) -> None:
    for content_type in ("text/plain", None):
        r = post(server, "predictions", body, content_type)
        assert r.status_code == 400 and "invisible" in r.json()["message"], r.text


@pytest.mark.parametrize("body", [b"text=good%", b"text=%ZZ", b"text=good%2"])
def test_a_bad_percent_escape_in_a_form_is_the_frontends_500_before_any_worker(server: Client, body: bytes) -> None:
    # TorchServe 0.12's frontend decodes form bodies itself (netty's HttpPostRequestDecoder) and
    # answers a malformed escape 500 ErrorDataDecoderException: no handler code runs, so only the
    # frontend could make it a 4xx (README, "Content types"). The worker never sees it, and lives.
    before = worker_pids(server)
    r = post(server, "predictions", body, FORM)
    assert r.status_code == 500 and "ErrorDataDecoderException" in r.text, (r.status_code, r.text[:300])
    assert post(server, "predictions", body.replace(b"%", b"%25"), FORM).status_code == 200  # escaped: fine
    assert worker_pids(server) == before


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
ours = st.fixed_dictionaries(
    {"text": st.text(max_size=60) | json_values},
    optional={k: json_values for k in ("method", "n_steps", "adaptive", "rtol", "ties", "x", "é")},
)
bodies = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    ours.map(lambda o: json.dumps(o).encode()),
    st.lists(ours | st.text(max_size=30), max_size=4).map(lambda xs: json.dumps({"instances": xs}).encode()),
    st.builds(
        lambda name, data: json.dumps({"inputs": [{"name": name, "shape": [1], "datatype": "BYTES", "data": data}]}),
        st.text(max_size=10),
        json_values,
    ).map(lambda s: s.encode()),
)
content_types = st.sampled_from(["application/json", "text/plain", FORM, None, "application/octet-stream"])


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, content_type=content_types, kind=st.sampled_from(["predictions", "explanations"]))
def test_fuzzed_requests_never_get_a_5xx(server: Client, body: bytes, content_type: str | None, kind: str) -> None:
    r = post(server, kind, body, content_type)
    if r.status_code == 500 and content_type == FORM and "ErrorDataDecoderException" in r.text:
        return  # TorchServe's frontend refused the form body (e.g. "=x") before any worker saw it
    assert r.status_code < 500, (body[:80], content_type, r.status_code, r.text[:300])


def test_ts_log_records_events_not_requests(server: Client) -> None:
    # log4j2.xml: the per-request and per-batch lines (1.1 KB a request before) stay out of ts_log;
    # the frontend's echo of the worker's [METRICS] lines goes to worker_metrics.log.
    logs = server.server.workdir / "logs"
    ts_log = (logs / "ts_log.log").read_text(errors="replace")
    for chatter in ("result=[METRICS]", "Sending response for jobId", "Looping backend response", "Backend response"):
        assert chatter not in ts_log, chatter
    assert "Backend received inference" not in (logs / "model_log.log").read_text(errors="replace")
    assert "result=[METRICS]imdb_reviews_total" in (logs / "worker_metrics.log").read_text(errors="replace")
    assert "... suppressed" in ts_log  # the malformed forms' traces, without netty's pipeline frames


def test_the_worker_survived_the_fuzz(server: Client) -> None:
    # Runs after the tests above (file order): the worker that started is the one still answering,
    # and the frontend never lost it (it reports a dead worker's PID for seconds, its log at once).
    log = (server.server.workdir / "logs" / "ts_log.log").read_text(errors="replace")
    assert "Worker disconnected" not in log and "Retry worker" not in log
    assert worker_pids(server) == server.first_pids and len(server.first_pids) == 1
    assert scrape(server)["imdb_worker_starts_total"] == 1  # Prometheus agrees: one worker start
