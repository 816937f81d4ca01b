"""The same answers from both servers: 200 IMDB test reviews (a seeded draw at the real length mix),
predicted and explained, as plain bodies and as KServe v1/v2 bodies, sent to TorchServe (the
shipped archive) and to KServe's Python server (kserve_server, the same archive): labels and every
non-numeric field equal, logits and attributions within 1e-6.
"""

from __future__ import annotations

import json
import shutil

import pytest
import requests

from imdb_bench import inputs as bench_inputs
from imdb_ops import build_mar, serve, serve_kserve
from tests.helpers import SHIPPED

MODEL = "imdb_sentiment"
TOL = 1e-6
NUMBERS = ("score", "logit", "delta", "reference_logit")
LISTS = ("attributions", "attributions_normalized")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs java on PATH"),
]


@pytest.fixture(scope="module")
def reviews() -> list[str]:
    texts, _ = bench_inputs.pick_reviews(None, 200, seed=17, lengths="imdb")
    return texts


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """(TorchServe's inference URL + its auth header, the KServe server's URL), both on one .mar."""
    d = tmp_path_factory.mktemp("cross")
    mar = build_mar.build(SHIPPED, d / "store")
    config = serve.isolated_config(d / "config.properties")
    with serve.running(d / "work", config, d / "store", timeout=180) as ts, serve_kserve.running(mar) as ks:
        auth = {"Authorization": f"Bearer {ts.keys()['inference']}"}
        yield (ts.inference, auth), (ks, {})


def send(server, path: str, body: str | dict) -> requests.Response:
    url, auth = server
    if isinstance(body, dict):
        return requests.post(url + path, data=json.dumps(body), headers={**auth, "Content-Type": "application/json"})
    return requests.post(url + path, data=body.encode(), headers={**auth, "Content-Type": "text/plain"}, timeout=60)


def plain(server, texts: list[str], explain: bool) -> list[dict]:
    path = f"/{'explanations' if explain else 'predictions'}/{MODEL}"
    replies = [send(server, path, t) for t in texts]
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies if r.status_code != 200][:1]
    return [r.json() for r in replies]


def kserve(server, texts: list[str], explain: bool, protocol: str) -> list[dict]:
    """The reviews 8 to a request, v1 instances or one v2 BYTES input."""
    answers = []
    for start in range(0, len(texts), 8):
        chunk = texts[start : start + 8]
        if protocol == "v1":
            r = send(server, f"/v1/models/{MODEL}:{'explain' if explain else 'predict'}", {"instances": chunk})
            answers += r.json()["explanations" if explain else "predictions"]
        else:
            body = {"id": "x", "inputs": [{"name": "text", "shape": [len(chunk)], "datatype": "BYTES", "data": chunk}]}
            r = send(server, f"/v2/models/{MODEL}/{'explain' if explain else 'infer'}", body)
            answers += [json.loads(e) for e in r.json()["outputs"][0]["data"]]
        assert r.status_code == 200, r.text
    return answers


def rest(answer: dict) -> dict:
    """The fields compared exactly: label, tokens, counts, method, engine, version, ..."""
    return {k: v for k, v in answer.items() if k not in NUMBERS + LISTS + ("probabilities",)}


def assert_same_answer(a: dict, b: dict) -> None:
    """One review's answers from both servers: the other fields equal, the numbers within TOL."""
    assert rest(a) == rest(b)
    for key in NUMBERS:
        if key in a:
            assert abs(a[key] - b[key]) <= TOL, (key, a[key], b[key])
    for key in LISTS:
        if key in a:
            assert max(abs(x - y) for x, y in zip(a[key], b[key])) <= TOL, key


def assert_same(ts: list[dict], ks: list[dict]) -> None:
    assert len(ts) == len(ks)
    for a, b in zip(ts, ks):
        assert_same_answer(a, b)


@pytest.mark.parametrize("explain", [False, True], ids=["predict", "explain"])
@pytest.mark.parametrize("body", ["plain", "v1", "v2"])
def test_both_servers_answer_the_same_200_imdb_reviews(servers, reviews: list[str], body: str, explain: bool) -> None:
    ts, ks = servers
    ask = (lambda s: plain(s, reviews, explain)) if body == "plain" else (lambda s: kserve(s, reviews, explain, body))
    from_ts, from_ks = ask(ts), ask(ks)
    assert_same(from_ts, from_ks)
    assert all(("attributions" in a) == explain for a in from_ks)
