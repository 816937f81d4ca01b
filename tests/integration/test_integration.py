"""Integration tests of issue 3 ("Serve it"): the shipped model behind a real TorchServe.

Each server runs in its own temporary working directory on free loopback ports and is always
stopped by pid (fixture finalizers run also when a test fails). One server per configuration:
  * the default configuration with batchSize 4 / maxBatchDelay 200 ms (batching tests);
  * KServe v1/v2 requests on the same batching archive, without service envelope (as in the cluster
    configuration of deploy/, tested as KServe starts it in test_deploy.py): the handler reads KServe
    v1 and v2 bodies itself, per request, so KServe requests are batched like any other;
  * TorchServe's own kservev2 envelope, on an archive of batchSize 1 (the envelopes only read
    request 0 of a batch): old configurations keep working.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from imdb_ops import build_mar, serve
from imdb_training.train import TUTORIAL_SENTENCES
from tests.helpers import SHIPPED

MODEL = "imdb_sentiment"
TOL = 1e-5
# The Captum IMDB tutorial's sentences and the labels its model gives them.
TUTORIAL = dict(TUTORIAL_SENTENCES)
REVIEWS = {
    "This movie was absolutely wonderful. The acting was superb and the story kept me engaged "
    "from start to finish. Highly recommended!": "pos",
    "One of the worst films I have ever seen. The plot made no sense, the acting was wooden "
    "and I wanted my money back.": "neg",
    "A beautiful, moving film with brilliant performances.<br /><br />I loved every minute of it.": "pos",
    "Boring, predictable and far too long. A complete waste of time.<br /><br />Avoid it.": "neg",
}
CUSTOM_METRICS = (
    "imdb_reviews_total",
    "imdb_explanations_total",
    "imdb_review_tokens_total",
    "imdb_unknown_tokens_total",
    "imdb_explanation_seconds_count",
    "imdb_batch_seconds_count",
    "imdb_request_errors_total",
    "HandlerTime",
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs java on PATH"),
]


@dataclass
class Client:
    server: serve.Server

    def __post_init__(self) -> None:
        keys = self.server.keys()
        self.auth = {"Authorization": f"Bearer {keys['inference']}"}
        self.management_auth = {"Authorization": f"Bearer {keys['management']}"}

    def post(
        self, path: str, body: bytes | dict | list | str, content_type: str = "application/json"
    ) -> requests.Response:
        data = (
            body.encode() if isinstance(body, str) else body if isinstance(body, bytes) else json.dumps(body).encode()
        )
        return requests.post(
            self.server.inference + path, data=data, timeout=60, headers={**self.auth, "Content-Type": content_type}
        )

    def answer(self, kind: str, body: bytes | dict | str, content_type: str = "application/json") -> dict:
        """kind: "predictions" or "explanations"; asserts a 200."""
        r = self.post(f"/{kind}/{MODEL}", body, content_type)
        assert r.status_code == 200, r.text
        return r.json()

    def log_lines(self) -> list[str]:
        """The frontend's copies of the worker's [METRICS] lines (log4j2.xml keeps them out of ts_log)."""
        log = self.server.workdir / "logs" / "worker_metrics.log"
        return log.read_text(errors="replace").splitlines() if log.exists() else []


def build_store(directory: Path, batch_size: int, max_batch_delay: int) -> Path:
    """Archive the shipped model with its batching settings replaced."""
    build_mar.build(SHIPPED, directory / "store", batchSize=batch_size, maxBatchDelay=max_batch_delay)
    return directory / "store"


def running(workdir: Path, config: Path, store: Path) -> Iterator[Client]:
    """Start TorchServe; stop it by pid whatever happens."""
    with serve.running(workdir, config, store, timeout=120) as server:
        yield Client(server)


@pytest.fixture(scope="session")
def batching_store(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("mar_batch4"), batch_size=4, max_batch_delay=200)


@pytest.fixture(scope="session")
def single_store(tmp_path_factory) -> Path:
    # batchSize 1: TorchServe's KServe envelopes read only request 0 of a batch.
    return build_store(tmp_path_factory.mktemp("mar_batch1"), batch_size=1, max_batch_delay=10)


@pytest.fixture(scope="module")
def ts(tmp_path_factory, batching_store: Path) -> Iterator[Client]:
    d = tmp_path_factory.mktemp("ts")
    yield from running(d / "work", serve.isolated_config(d / "config.properties"), batching_store)


@pytest.fixture(scope="module")
def kserve(tmp_path_factory, batching_store: Path) -> Iterator[Client]:
    """No service envelope (as in deploy/storage/config/config.properties) on the batching archive."""
    d = tmp_path_factory.mktemp("kserve")
    config = serve.isolated_config(d / "config.properties")
    yield from running(d / "work", config, batching_store)


@pytest.fixture(scope="module")
def kservev2_envelope(tmp_path_factory, single_store: Path) -> Iterator[Client]:
    d = tmp_path_factory.mktemp("kservev2_envelope")
    config = serve.isolated_config(d / "config.properties", service_envelope="kservev2")
    yield from running(d / "work", config, single_store)


def concurrently(calls: list[Callable[[], requests.Response]]) -> list[requests.Response]:
    """Fire all calls at once (threads released together) and return their responses in order."""
    barrier = threading.Barrier(len(calls))

    def fire(call: Callable[[], requests.Response]) -> requests.Response:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(fire, calls))


def batches_since(
    client: Client, seen: int, until: Callable[[list[dict[str, float]]], bool], wait: float = 15.0
) -> list[dict[str, float]]:
    """Per handler call after log line ``seen``: {metric: value} from the [METRICS] lines the
    frontend logs (each carries the ids of the batch it was emitted for), read again until
    ``until`` holds or ``wait`` seconds pass: the frontend copies the worker's output on its own
    thread, so a batch's lines can land after its answers."""
    pattern = re.compile(r"\[METRICS\](\w+)\.\w+:([\d.]+)\|.*#hostname:[^,]*,\d+,(.+?),? pattern=")
    deadline = time.time() + wait
    while True:
        batches: dict[str, dict[str, float]] = {}
        for line in client.log_lines()[seen:]:
            if m := pattern.search(line):
                batches.setdefault(m.group(3), {})[m.group(1)] = float(m.group(2))
        if until(list(batches.values())) or time.time() > deadline:
            return list(batches.values())
        time.sleep(0.2)


def reviews_served(batches: list[dict[str, float]]) -> list[float]:
    return [b["imdb_reviews_total"] for b in batches if "imdb_reviews_total" in b]


def a_mixed_batch(batches: list[dict[str, float]]) -> bool:
    """One handler call explained some of its reviews and only predicted others."""
    return any(0 < b.get("imdb_explanations_total", 0) < b.get("imdb_reviews_total", 0) for b in batches)


def an_error_beside_answers(batches: list[dict[str, float]]) -> bool:
    """One handler call answered reviews and refused a request."""
    return any(b.get("imdb_request_errors_total") and b.get("imdb_reviews_total") for b in batches)


def top_token(answer: dict, sign: int) -> str:
    scores = [sign * a for a in answer["attributions"]]
    return answer["tokens"][scores.index(max(scores))]


def assert_complete(answer: dict) -> None:
    """sum(attributions) = F(x) - F(ref) + delta (float tolerance), and |delta| is small."""
    gap = answer["logit"] - answer["reference_logit"]
    assert sum(answer["attributions"]) - gap == pytest.approx(answer["delta"], abs=TOL)
    assert abs(answer["delta"]) <= 1e-3 * abs(gap) + 1e-4


def test_tutorial_sentences_get_the_tutorial_labels(ts: Client) -> None:
    for text, label in TUTORIAL.items():
        predicted = ts.answer("predictions", text.encode(), "text/plain")
        explained = ts.answer("explanations", {"text": text})
        assert (predicted["label"], explained["label"]) == (label, label), text
        assert explained["logit"] == pytest.approx(predicted["logit"], abs=TOL)
        assert "attributions" not in predicted
        assert len(explained["tokens"]) == len(explained["attributions"]) == explained["n_tokens"]


def test_fantastic_is_the_most_positive_and_horrible_the_most_negative_token(ts: Client) -> None:
    assert top_token(ts.answer("explanations", {"text": "It was a fantastic performance !"}), +1) == "fantastic"
    assert top_token(ts.answer("explanations", {"text": "It was a horrible movie"}), -1) == "horrible"


def test_real_reviews_are_predicted_and_explained(ts: Client) -> None:
    for text, label in REVIEWS.items():
        answer = ts.answer("explanations", {"text": text})
        assert answer["label"] == label, text
        assert answer["probabilities"]["pos"] == pytest.approx(answer["score"])
        assert "<br" not in "".join(answer["tokens"]) and not answer["truncated"]


def test_attributions_of_reviews_are_complete(ts: Client) -> None:
    for text in [*REVIEWS, *TUTORIAL]:
        assert_complete(ts.answer("explanations", {"text": text}))  # the configured method
        quadrature = ts.answer("explanations", {"text": text, "method": "gausslegendre"})
        assert quadrature["n_steps"] >= 50
        assert_complete(quadrature)


def assert_answered_as_when_alone(together: dict, alone: dict, explained: bool) -> None:
    """An answer given inside a batch is the one given alone: label and logit, and the tokens and
    attributions too when ``explained``."""
    assert together["label"] == alone["label"]
    assert together["logit"] == pytest.approx(alone["logit"], abs=TOL)
    if explained:
        assert together["tokens"] == alone["tokens"]
        assert together["attributions"] == pytest.approx(alone["attributions"], abs=TOL)


def test_eight_concurrent_requests_are_batched_and_answered_as_when_alone(ts: Client) -> None:
    texts = [*TUTORIAL, *REVIEWS][:8]
    kinds = ["explanations", "predictions"] * 4
    alone = [ts.answer(kind, {"text": text}) for kind, text in zip(kinds, texts)]
    seen = len(ts.log_lines())
    responses = concurrently([lambda k=k, t=t: ts.post(f"/{k}/{MODEL}", {"text": t}) for k, t in zip(kinds, texts)])
    assert [r.status_code for r in responses] == [200] * 8
    for kind, single, r in zip(kinds, alone, responses):
        assert_answered_as_when_alone(r.json(), single, explained=kind == "explanations")
    served = reviews_served(batches_since(ts, seen, until=lambda b: sum(reviews_served(b)) >= 8))
    assert sum(served) == 8 and max(served) > 1, f"no batch of several requests: {served}"


def test_a_batch_mixing_explain_and_predict_answers_each_as_asked(ts: Client) -> None:
    kinds = ["explanations", "predictions", "predictions", "explanations"]
    seen = len(ts.log_lines())
    responses = concurrently([lambda k=k: ts.post(f"/{k}/{MODEL}", {"text": "Best film ever"}) for k in kinds])
    assert [r.status_code for r in responses] == [200] * 4
    for kind, r in zip(kinds, responses):
        assert ("attributions" in r.json() and "tokens" in r.json()) == (kind == "explanations")
    batches = batches_since(ts, seen, until=a_mixed_batch)
    assert a_mixed_batch(batches), batches


BAD_REQUESTS = {  # body, content type, what the message must mention
    "empty body": (b"", "text/plain", "empty"),
    "invalid utf-8": (b"\xff\xfe review", "application/octet-stream", "UTF-8"),
    "json without text": (b'{"review": "Best film ever"}', "application/json", "'text'"),
    "text of wrong type": (b'{"text": 5}', "application/json", "must be a string"),
    "n_steps out of range": (b'{"text": "Best film ever", "n_steps": 100000}', "application/json", "n_steps"),
}


@pytest.mark.parametrize("kind", BAD_REQUESTS)
def test_a_bad_request_in_a_concurrent_batch_gets_its_4xx_and_the_others_200(ts: Client, kind: str) -> None:
    body, content_type, hint = BAD_REQUESTS[kind]
    good = {"text": "It was a horrible movie"}
    calls = [
        lambda: ts.post(f"/explanations/{MODEL}", good),
        lambda: ts.post(f"/explanations/{MODEL}", body, content_type),
        lambda: ts.post(f"/predictions/{MODEL}", good),
        lambda: ts.post(f"/explanations/{MODEL}", good),
    ]
    seen = len(ts.log_lines())
    responses = concurrently(calls)
    assert [r.status_code for r in responses] == [200, 400, 200, 200], [r.text for r in responses]
    error = responses[1].json()
    assert error["code"] == 400 and hint in error["message"], error
    assert all(r.json()["label"] == "neg" for i, r in enumerate(responses) if i != 1)
    batches = batches_since(ts, seen, until=an_error_beside_answers)
    assert an_error_beside_answers(batches), batches


def scrape(client: Client) -> dict[str, float]:
    """Prometheus text -> {metric name: value} for this model's handler metrics."""
    text = requests.get(client.server.metrics + "/metrics", headers=client.auth, timeout=10).text
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(rf'^(\w+)\{{(?:model_name|ModelName)="{MODEL}".*\}} (\S+)$', text, re.M)
    }


def test_custom_metrics_are_on_the_metrics_endpoint(ts: Client) -> None:
    ts.answer("explanations", {"text": "It was a fantastic performance !"})
    assert ts.post(f"/predictions/{MODEL}", {"text": 5}).status_code == 400
    deadline = time.time() + 5
    while not set(CUSTOM_METRICS) <= set(metrics := scrape(ts)) and time.time() < deadline:
        time.sleep(0.2)
    assert set(CUSTOM_METRICS) <= set(metrics), metrics
    assert metrics["imdb_reviews_total"] >= metrics["imdb_explanations_total"] >= 1
    assert metrics["imdb_request_errors_total"] >= 1 and metrics["imdb_review_tokens_total"] >= 6
    assert metrics["imdb_explanation_seconds_count"] >= 1 and metrics["HandlerTime"] > 0


def test_requests_without_or_with_a_bad_token_are_refused(ts: Client) -> None:
    urls = [
        ts.server.inference + "/ping",
        ts.server.inference + f"/predictions/{MODEL}",
        ts.server.management + "/models",
    ]
    for url in urls:
        for headers in ({}, {"Authorization": "Bearer not-the-key"}):
            r = (
                requests.post(
                    url, data=b"Best film ever", headers={**headers, "Content-Type": "text/plain"}, timeout=10
                )
                if "predictions" in url
                else requests.get(url, headers=headers, timeout=10)
            )
            # TorchServe 0.12 answers a failed token check with 400 InvalidKeyException.
            assert r.status_code == 400 and "Token Authorization failed" in r.json()["message"], (url, r.text)
    assert requests.get(urls[0], headers=ts.auth, timeout=10).json() == {"status": "Healthy"}


def test_model_registration_over_the_management_api_is_refused(ts: Client) -> None:
    r = requests.post(ts.server.management + f"/models?url={MODEL}.mar", headers=ts.management_auth, timeout=10)
    assert r.status_code == 405, r.text  # enable_model_api=false
    r = requests.get(ts.server.management + "/models", headers=ts.management_auth, timeout=10)
    assert [m["modelName"] for m in r.json()["models"]] == [MODEL]


def test_describe_returns_labels_and_vocab_size(ts: Client) -> None:
    r = requests.get(ts.server.management + f"/models/{MODEL}?customized=true", headers=ts.management_auth, timeout=30)
    assert r.status_code == 200, r.text
    (described,) = r.json()
    meta = described["customizedMetadata"]
    meta = json.loads(meta) if isinstance(meta, str) else meta
    vocab_size = len(json.loads((SHIPPED / "vocab.json").read_text()))
    assert meta["labels"] == ["neg", "pos"] and meta["vocab_size"] == vocab_size
    assert (described["batchSize"], described["maxBatchDelay"]) == (4, 200)


def kserve_call(flavour: str, texts: list, explain: bool) -> tuple[str, dict]:
    """Path and body of one KServe request for ``texts``: v1 instances, or one v2 BYTES input of
    shape [len(texts)] (each data element one review)."""
    if flavour == "v1":
        return f"/v1/models/{MODEL}:{'explain' if explain else 'predict'}", {"instances": texts}
    inputs = [{"name": "reviews", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]
    return f"/v2/models/{MODEL}/{'explain' if explain else 'infer'}", {"id": "req-1", "inputs": inputs}


def kserve_answers(flavour: str, r: requests.Response, explain: bool) -> list[dict]:
    """The per-review answers of a KServe response, after checking its envelope."""
    body = r.json()
    if flavour == "v1":
        assert list(body) == ["explanations" if explain else "predictions"], body
        return body["explanations" if explain else "predictions"]
    assert (body["id"], body["model_name"], body["model_version"]) == ("req-1", MODEL, "1.0"), body
    (output,) = body["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("answer", "BYTES", [len(output["data"])])
    return [json.loads(e) for e in output["data"]]  # each element one answer's JSON


@pytest.mark.parametrize("flavour", ["v1", "v2"])
def test_kserve_predict_and_explain_answer_each_instance(kserve: Client, flavour: str) -> None:
    texts, labels = list(TUTORIAL), list(TUTORIAL.values())
    answers = {}
    for explain in (False, True):
        r = kserve.post(*kserve_call(flavour, [{"text": t} if flavour == "v1" else t for t in texts], explain))
        assert r.status_code == 200, r.text
        answers[explain] = kserve_answers(flavour, r, explain)
    predicted, explained = answers[False], answers[True]
    assert [p["label"] for p in predicted] == [e["label"] for e in explained] == labels
    assert not any("attributions" in p for p in predicted)
    assert top_token(explained[0], +1) == "fantastic"
    for p, e in zip(predicted, explained):
        assert e["logit"] == pytest.approx(p["logit"], abs=TOL)
        assert_complete(e)


def test_eight_concurrent_kserve_requests_are_batched_and_answered_as_when_alone(kserve: Client) -> None:
    texts = [*TUTORIAL, *REVIEWS]
    kinds = [("v1", False), ("v1", True), ("v2", False), ("v2", True)] * 2
    calls = [kserve_call(flavour, texts[k : k + 2], explain) for k, (flavour, explain) in enumerate(kinds)]
    before = len(kserve.log_lines())
    alone = [kserve_answers(f, kserve.post(*call), e) for (f, e), call in zip(kinds, calls)]
    # The frontend copies the worker's [METRICS] lines on its own thread: let the lone requests'
    # lines all land before counting the concurrent ones (else a late one counts as theirs).
    batches_since(kserve, before, until=lambda b: sum(reviews_served(b)) >= 16)
    seen = len(kserve.log_lines())
    responses = concurrently([lambda call=call: kserve.post(*call) for call in calls])
    assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
    for (flavour, explain), single, r in zip(kinds, alone, responses):
        for one, together in zip(single, kserve_answers(flavour, r, explain), strict=True):
            assert_answered_as_when_alone(together, one, explained=explain)
    served = reviews_served(batches_since(kserve, seen, until=lambda b: sum(reviews_served(b)) >= 16))
    assert sum(served) == 16 and max(served) > 2, f"no batch of several KServe requests: {served}"


def test_kserve_bad_instance_is_answered_inline_and_a_request_of_only_bad_ones_is_a_400(kserve: Client) -> None:
    r = kserve.post(f"/v1/models/{MODEL}:predict", {"instances": [{"text": 5}, {"text": "Best film ever"}]})
    assert r.status_code == 200, r.text
    bad, good = r.json()["predictions"]
    assert bad["code"] == 400 and "string" in bad["message"] and good["label"] == "pos"
    r = kserve.post(*kserve_call("v2", ["Best film ever", "<br />"], explain=True))
    assert r.status_code == 200, r.text
    good, bad = kserve_answers("v2", r, explain=True)
    assert good["label"] == "pos" and "attributions" in good and bad["code"] == 400 and "no tokens" in bad["message"]
    for flavour, only_bad in (("v1", [{"text": 5}]), ("v2", [""])):
        r = kserve.post(*kserve_call(flavour, only_bad, explain=False))
        assert r.status_code == 400, r.text
        assert kserve_answers(flavour, r, explain=False)[0]["code"] == 400
    malformed = {"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [5]}]}
    r = kserve.post(f"/v2/models/{MODEL}/infer", malformed)
    assert r.status_code == 400 and "BYTES" in r.json()["message"], r.text


def test_torchserves_own_kservev2_envelope_still_works(kservev2_envelope: Client) -> None:
    # The envelope hands the handler one instance per input (data[0]) and wraps the answers.
    client, texts = kservev2_envelope, list(TUTORIAL)[:3]
    inputs = [{"name": f"input-{i}", "shape": [1], "datatype": "BYTES", "data": [t]} for i, t in enumerate(texts)]
    for explain in (False, True):
        r = client.post(f"/v2/models/{MODEL}/{'explain' if explain else 'infer'}", {"id": "req-1", "inputs": inputs})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["id"] == "req-1" and [o["name"] for o in body["outputs"]] == [i["name"] for i in inputs]
        answers = [o["data"][0] for o in body["outputs"]]
        assert [a["label"] for a in answers] == [TUTORIAL[t] for t in texts]
        assert all(("attributions" in a) == explain for a in answers)


def test_the_benchmark_load_generator_reads_every_answer_and_counts_the_failures(ts: Client) -> None:
    """imdb_bench/load.py's raw keep-alive HTTP client: 20 requests over 4 connections, 3 of them bad."""
    from imdb_bench import load as bench_load

    good, bad = json.dumps({"text": "A fine film."}).encode(), b'{"no_text": 1}'
    for kind in ("predictions", "explanations"):
        res = bench_load.drive(
            f"{ts.server.inference}/{kind}/{MODEL}",
            ts.auth["Authorization"].split()[1],
            [good] * 17 + [bad] * 3,
            concurrency=4,
        )
        assert res["requests"] == 20 and res["errors"] == 3, res
        assert res["per_s"] > 0 and 0 < res["p50_ms"] <= res["p99_ms"], res
