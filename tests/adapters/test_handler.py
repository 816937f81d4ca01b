"""The handler in-process, with a real ``ts.context.Context`` and a tiny random model.

TorchServe's MockContext has no request headers, so it never enters the explain path; a real
Context with one RequestProcessor per request does, exactly as the worker builds it. The tiny
model is random: these tests check the serving logic, not the shipped model's answers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from handler.sentiment_handler import SentimentHandler
from handler.text import Vocab, tokenize
from tests.frames import encode_and_parse
from tests.helpers import REPO, tiny_artifacts

MODEL = "imdb_sentiment"
CORPUS = [
    "It was a fantastic performance !",
    "Best film ever",
    "Such a great show!",
    "It was a horrible movie",
    "I've never watched something as bad",
    "That is a terrible movie.",
    "The plot was thin but the actors carried the film with charm and wit.",
]
LONG_REVIEW = " ".join(["the movie was great and the plot was bad ."] * 60)  # 600 tokens
TOL = 1e-5

Row = tuple[object, bool]  # (request body as the worker hands it over, explain header)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_artifacts(tmp_path_factory.mktemp("tiny_model"), embedding_dim=16, n_filters=8)


@pytest.fixture(scope="module")
def metrics() -> MetricsCacheYamlImpl:
    cache = MetricsCacheYamlImpl(config_file_path=str(REPO / "metrics.yaml"))
    cache.initialize_cache()
    return cache


@pytest.fixture(scope="module")
def handler(model_dir: Path, metrics: MetricsCacheYamlImpl) -> SentimentHandler:
    h = SentimentHandler()
    h.initialize(make_context(model_dir, metrics, [{}]))
    return h


def make_context(model_dir: Path, metrics: MetricsCacheYamlImpl, headers: list[dict]) -> Context:
    """A Context as TorchServe's worker builds it for one batch: one RequestProcessor per request."""
    model_yaml = yaml.safe_load((REPO / "model-config.yaml").read_text())
    manifest = {"model": {"modelName": MODEL, "modelVersion": "1.0"}}
    ctx = Context(
        MODEL, str(model_dir), manifest, len(headers), None, "0.12.0", metrics=metrics, model_yaml_config=model_yaml
    )
    ctx.request_processor = [RequestProcessor(h) for h in headers]
    ctx.request_ids = {i: str(i) for i in range(len(headers))}
    metrics.set_request_ids(ctx.request_ids)
    return ctx


def serve(
    handler: SentimentHandler, model_dir: Path, metrics: MetricsCacheYamlImpl, rows: list[Row]
) -> tuple[list[dict], list[int]]:
    """Answer one batch; returns each request's body and HTTP status as read back from the worker's frame."""
    ctx = make_context(model_dir, metrics, [{"explain": "True" if explain else "False"} for _, explain in rows])
    replies = encode_and_parse(handler.handle([{"body": body} for body, _ in rows], ctx), ctx)
    return [r.body for r in replies], [r.status for r in replies]


@pytest.fixture
def run(handler: SentimentHandler, model_dir: Path, metrics: MetricsCacheYamlImpl):
    return lambda rows: serve(handler, model_dir, metrics, rows)


def assert_complete(answer: dict) -> None:
    """Completeness: sum(attributions) - (F(x) - F(ref)) is the reported delta, and delta is small."""
    gap = answer["logit"] - answer["reference_logit"]
    assert sum(answer["attributions"]) - gap == pytest.approx(answer["delta"], abs=TOL)
    # adaptive quadrature stops at rtol 1e-3 or at max_steps; the exact method at float rounding
    assert abs(answer["delta"]) <= 1e-3 * abs(gap) + 1e-4


def test_mixed_batch_explains_only_the_requests_with_the_explain_header(run) -> None:
    out, status = run(
        [
            (b"It was a fantastic performance !", True),
            ("Best film ever", False),
            ({"text": "It was a horrible movie"}, True),
            (b'{"text": "Such a great show!"}', False),
        ]
    )
    assert status == [200] * 4
    assert [("attributions" in o) for o in out] == [True, False, True, False]
    assert out[0]["tokens"] == ["it", "was", "a", "fantastic", "performance", "!"]
    assert len(out[0]["attributions"]) == len(out[0]["tokens"]) == out[0]["n_tokens"]
    for o in out:
        assert o["label"] in ("neg", "pos") and o["label"] == ("pos" if o["logit"] > 0 else "neg")
        assert o["score"] == pytest.approx(1 / (1 + math.exp(-o["logit"])))


BAD_REQUESTS = {
    "empty body": (b"", 400),
    "whitespace only": (b"  \n ", 400),
    "invalid utf-8": (b"\xff\xfe\xfa", 400),
    "unparsable json": (b'{"text": "unterminated', 400),
    "json without text": ({"review": "Best film ever"}, 400),
    "text of wrong type": ({"text": 5}, 400),
    "json list": ([1, 2], 400),
    "unknown field": ({"text": "Best film ever", "colour": "red"}, 400),
    "n_steps too small": ({"text": "Best film ever", "n_steps": 1}, 400),
    "n_steps too large": ({"text": "Best film ever", "n_steps": 100_000}, 400),
    "n_steps of wrong type": ({"text": "Best film ever", "n_steps": "50"}, 400),
    "unknown method": ({"text": "Best film ever", "method": "simpson"}, 400),
    "rtol out of range": ({"text": "Best film ever", "rtol": 2.0}, 400),
    "empty after tokenizing": (b"<br /><br />", 400),
    "only zero width spaces": ("\u200b" * 3, 400),
    "only NUL bytes": (b"\x00" * 20, 400),
    "too long": ("x" * 100_001, 413),
}


@pytest.mark.parametrize("kind", BAD_REQUESTS)
def test_a_bad_request_gets_its_own_4xx_and_the_rest_of_the_batch_200(run, kind: str) -> None:
    body, code = BAD_REQUESTS[kind]
    out, status = run([("It was a fantastic performance !", True), (body, True), ("Best film ever", False)])
    assert status == [200, code, 200]
    assert out[1]["code"] == code and isinstance(out[1]["message"], str) and out[1]["message"]
    assert "attributions" in out[0] and "label" in out[2]


def test_batched_answers_equal_single_answers(run) -> None:
    rows = [(CORPUS[6], True), (CORPUS[1], True), (CORPUS[3], False), (LONG_REVIEW, True), (CORPUS[2], False)]
    batched, status = run(rows)
    assert status == [200] * len(rows)
    for row, together in zip(rows, batched):
        alone = run([row])[0][0]
        assert together["tokens" if row[1] else "n_tokens"] == alone["tokens" if row[1] else "n_tokens"]
        assert together["logit"] == pytest.approx(alone["logit"], abs=TOL)
        if row[1]:
            assert together["attributions"] == pytest.approx(alone["attributions"], abs=TOL)
            assert together["delta"] == pytest.approx(alone["delta"], abs=TOL)


def test_explain_answers_are_predict_answers_plus_attributions(run) -> None:
    (explained, predicted), _ = run([(CORPUS[0], True), (CORPUS[0], False)])
    assert explained["logit"] == pytest.approx(predicted["logit"], abs=TOL)
    same = ("label", "n_tokens", "truncated", "unknown_tokens")
    assert {k: explained[k] for k in same} == {k: predicted[k] for k in same}


def test_attributions_are_complete(run) -> None:
    texts = [*CORPUS, LONG_REVIEW]
    default, _ = run([(text, True) for text in texts])  # the configured method (model-config.yaml)
    quadrature, _ = run([({"text": text, "method": "gausslegendre"}, True) for text in texts])
    for answer in default + quadrature:
        assert_complete(answer)


def test_request_options_choose_steps_and_method(run) -> None:
    out, status = run(
        [
            ({"text": CORPUS[6], "method": "gausslegendre", "n_steps": 8, "adaptive": False}, True),
            ({"text": CORPUS[6], "method": "exact"}, True),
            ({"text": CORPUS[6], "method": "gausslegendre", "adaptive": True}, True),
        ]
    )
    assert status == [200] * 3
    assert [(o["method"], o["n_steps"]) for o in out[:2]] == [("gausslegendre", 8), ("exact", 0)]
    assert out[2]["n_steps"] >= 50 and out[2]["method"] == "gausslegendre"
    # Both integrate the same path; the adaptive rule only bounds the summed error (delta), so
    # single tokens agree to about 1% of the largest attribution.
    scale = max(map(abs, out[1]["attributions"]))
    assert out[1]["attributions"] == pytest.approx(out[2]["attributions"], abs=1e-2 * scale)


def test_long_review_is_truncated_and_flagged(run) -> None:
    (explained, predicted), _ = run([(LONG_REVIEW, True), (LONG_REVIEW, False)])
    assert explained["truncated"] and predicted["truncated"]
    assert explained["n_tokens"] == predicted["n_tokens"] == 512 == len(explained["attributions"])
    short, _ = run([(CORPUS[0], False)])
    assert short[0]["truncated"] is False


def test_unknown_tokens_are_counted(run) -> None:
    out, _ = run([("It was a zxqv performance qqqz", False)])
    assert out[0]["unknown_tokens"] == 2


def test_describe_reports_labels_vocab_size_and_settings(handler: SentimentHandler, model_dir: Path, metrics) -> None:
    ctx = make_context(model_dir, metrics, [{"describe": "True"}])
    (described,) = handler.handle([{"body": b""}], ctx)
    assert described == handler.describe_handle()
    assert described["labels"] == ["neg", "pos"]
    assert described["vocab_size"] == len(Vocab.load(model_dir))
    assert described["text"] == {"min_len": 7, "max_tokens": 512, "lowercase": True}  # from model_config.json
    assert described["attribution"]["defaults"]["method"] == "exact" and described["attribution"]["ties"] == "split"
    assert described["model_version"] == "1.0" and described["calibration"] == {"temperature": 1.0}


def test_kserve_instances_of_one_request_all_follow_its_explain_header(handler, model_dir, metrics) -> None:
    # The KServe envelopes hand over the instances of request 0: more rows than request ids.
    ctx = make_context(model_dir, metrics, [{"explain": "True"}])
    out = handler.handle([{"text": CORPUS[0]}, {"name": "input-0", "datatype": "BYTES", "data": CORPUS[3]}], ctx)
    assert [o["tokens"] for o in out] == [tokenize([CORPUS[0]])[0], tokenize([CORPUS[3]])[0]]
    (reply,) = encode_and_parse(out, ctx)  # the envelope answers request 0; no status of its own is set
    assert (reply.status, reply.phrase, reply.body) == (200, b"", out[0])


def v2_body(*texts, name: str = "input-0", **extra) -> dict:
    return {**extra, "inputs": [{"name": name, "shape": [len(texts)], "datatype": "BYTES", "data": list(texts)}]}


def metric_lines(caplog, name: str) -> list[str]:
    """The [METRICS] lines the worker logs for the frontend (TorchServe's own metrics API)."""
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"[METRICS]{name}.")]


def assert_each_reply_has_its_requests_shape(out: list[dict]) -> None:
    """Replies to: a plain request, a v1 predict, a v2 explain (id req-9, 2 reviews), a v1 explain
    with a method, and a v2 infer without an id."""
    assert out[0]["label"] in ("neg", "pos") and "attributions" not in out[0]
    assert list(out[1]) == ["predictions"] and len(out[1]["predictions"]) == 2
    assert list(out[3]) == ["explanations"] and out[3]["explanations"][0]["method"] == "gausslegendre"
    assert {k: out[2][k] for k in ("id", "model_name", "model_version")} == {
        "id": "req-9",
        "model_name": MODEL,
        "model_version": "1.0",
    }
    (output,) = out[2]["outputs"]
    assert (output["name"], output["shape"], output["datatype"], len(output["data"])) == ("answer", [2], "BYTES", 2)
    assert out[4]["id"] == "4" and out[4]["outputs"][0]["name"] == "answer"  # no body id: TorchServe's request id


def assert_answered_as_when_alone(answer: dict, alone: dict, explain: bool) -> None:
    """The same logit as alone, and attributions (the same) only when explained."""
    assert ("attributions" in answer) == explain
    assert answer["logit"] == pytest.approx(alone["logit"], abs=TOL)
    if explain:
        assert answer["attributions"] == pytest.approx(alone["attributions"], abs=TOL)


def test_a_batch_mixing_plain_kserve_v1_and_v2_requests_answers_each_in_its_shape(run, caplog) -> None:
    caplog.set_level("INFO")
    rows = [
        (CORPUS[0], False),
        ({"instances": [{"text": CORPUS[1]}, CORPUS[3]]}, False),
        (v2_body(CORPUS[2], CORPUS[4], id="req-9"), True),
        ({"instances": [{"text": CORPUS[6], "method": "gausslegendre"}]}, True),
        (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "BYTES", "data": ["Best film ever"]}]}', False),
    ]
    out, status = run(rows)
    assert status == [200] * 5
    assert_each_reply_has_its_requests_shape(out)
    # every review is answered as when alone, and explained only in the explain requests
    together = [
        out[0],
        *out[1]["predictions"],
        *map(json.loads, out[2]["outputs"][0]["data"]),
        *out[3]["explanations"],
        json.loads(out[4]["outputs"][0]["data"][0]),
    ]
    alone_rows = [
        (CORPUS[0], False),
        (CORPUS[1], False),
        (CORPUS[3], False),
        (CORPUS[2], True),
        (CORPUS[4], True),
        ({"text": CORPUS[6], "method": "gausslegendre"}, True),
        (CORPUS[1], False),
    ]
    for (body, explain), answer in zip(alone_rows, together):
        assert_answered_as_when_alone(answer, run([(body, explain)])[0][0], explain)
    # metrics count reviews, not requests, with the model's name and version as dimensions
    served = metric_lines(caplog, "imdb_reviews_total")[0]
    assert served.startswith("[METRICS]imdb_reviews_total.Count:7|#model_name:imdb_sentiment,model_version:1.0|")


def test_kserve_bad_instances_are_answered_inline_and_fail_the_request_only_when_all_fail(run) -> None:
    out, status = run(
        [
            ({"instances": [{"text": 5}, CORPUS[1], ""]}, False),
            (v2_body("", "<br />"), True),
            ({"instances": [{"text": 5}]}, True),
            (CORPUS[0], False),
        ]
    )
    assert status == [200, 400, 400, 200]
    bad, good, empty = out[0]["predictions"]
    assert bad["code"] == 400 and "string" in bad["message"] and empty["code"] == 400 and good["label"]
    assert [json.loads(a)["code"] for a in out[1]["outputs"][0]["data"]] == [400, 400]
    assert out[2]["explanations"][0]["code"] == 400


def test_malformed_kserve_body_is_a_400_for_its_request_alone(run) -> None:
    fp32 = {"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    out, status = run(
        [
            ({"instances": []}, False),
            (fp32, False),
            ({"instances": ["x"] * 65}, False),
            ({"instances": [CORPUS[0]]}, False),
        ]
    )
    assert status == [400, 400, 400, 200]
    assert "non-empty" in out[0]["message"] and "BYTES" in out[1]["message"] and "at most 64" in out[2]["message"]
    assert out[3]["predictions"][0]["label"] in ("neg", "pos")


# --- hardening (issue 11): replies read back from TorchServe's own frame -------------------------

HOSTILE_NAMES = ["é", "😀", "a\nb", "n" * 70_000]


def serve_frames(handler, model_dir, metrics, rows: list[Row]):
    ctx = make_context(model_dir, metrics, [{"explain": "True" if explain else "False"} for _, explain in rows])
    return encode_and_parse(handler.handle([{"body": body} for body, _ in rows], ctx), ctx)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_user_names_get_a_400_with_a_short_ascii_phrase_and_the_batch_is_answered(handler, model_dir, metrics, name):
    v2 = {"inputs": [{"name": name, "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    replies = serve_frames(
        handler,
        model_dir,
        metrics,
        [(CORPUS[0], True), ({"text": "good", name: 1}, True), (v2, False), (CORPUS[1], False)],
    )
    assert [r.status for r in replies] == [200, 400, 400, 200]
    for bad in replies[1:3]:
        assert bad.phrase == b"Bad Request"
        assert bad.body["code"] == 400 and bad.body["message"].isascii() and len(bad.body["message"]) < 200
        assert bad.body["request_id"] == bad.request_id
    assert "attributions" in replies[0].body and replies[3].body["label"] in ("neg", "pos")


def test_a_lone_surrogate_and_a_5000_digit_integer_are_400s_and_the_rest_is_unchanged(handler, model_dir, metrics):
    good = [(CORPUS[0], True), (CORPUS[3], False), ({"text": CORPUS[6], "method": "gausslegendre"}, True)]
    alone = [r.body for r in serve_frames(handler, model_dir, metrics, good)]
    hostile = [
        (b'{"text": "good \\ud800 movie"}', True),
        (b'{"text": "good", "n_steps": ' + b"7" * 5000 + b"}", True),
    ]
    replies = serve_frames(handler, model_dir, metrics, [good[0], hostile[0], good[1], hostile[1], good[2]])
    assert [r.status for r in replies] == [200, 400, 200, 400, 200]
    assert [replies[i].body for i in (0, 2, 4)] == alone  # exactly the answers they get without the hostile ones


def test_a_tokenizer_failure_is_that_reviews_400(handler, model_dir, metrics, monkeypatch):
    import handler.core as module

    real = module.tokenize

    def fragile(texts, lowercase=True):  # stands in for spaCy raising on one input
        if any("boom" in t for t in texts):
            raise UnicodeEncodeError("utf-8", "boom", 0, 1, "surrogates not allowed")
        return real(texts, lowercase=lowercase)

    monkeypatch.setattr(module, "tokenize", fragile)
    replies = serve_frames(handler, model_dir, metrics, [(CORPUS[0], False), ("boom", True), (CORPUS[1], True)])
    assert [r.status for r in replies] == [200, 400, 200]
    assert "tokenized" in replies[1].body["message"] and "attributions" in replies[2].body


@pytest.mark.parametrize(
    "row, text",
    [
        (
            {"body": '{"text": "Best film ever", "method": "gausslegendre", "n_steps": 8, "adaptive": false}'},
            None,
        ),  # text/plain
        (
            {
                "text": bytearray(b"Best film ever"),
                "method": bytearray(b"gausslegendre"),
                "n_steps": b"8",
                "adaptive": b"false",
            },
            None,
        ),  # form
        (
            {'{"text": "Best film ever", "method": "gausslegendre", "n_steps": 8, "adaptive": false}': bytearray()},
            None,
        ),  # curl -d
        ({"Best film ever": bytearray()}, "Best film ever"),  # curl -d 'Best film ever='
    ],
)
def test_bodies_are_read_by_one_content_type_rule(handler, model_dir, metrics, row, text):
    ctx = make_context(model_dir, metrics, [{"explain": "True"}])
    ((reply,),) = [encode_and_parse(handler.handle([row], ctx), ctx)]
    assert reply.status == 200 and reply.body["tokens"] == ["best", "film", "ever"]
    if text is None:  # the JSON's options were honoured, not dropped
        assert (reply.body["method"], reply.body["n_steps"]) == ("gausslegendre", 8)


def test_answers_carry_the_model_version_and_the_tie_rule(run) -> None:
    (explained, predicted), _ = run([(CORPUS[0], True), (CORPUS[0], False)])
    assert explained["model_version"] == predicted["model_version"] == "1.0"
    assert explained["ties"] == "split" and "ties" not in predicted


def initialized(model_dir: Path, metrics, model_yaml: dict | None = None) -> SentimentHandler:
    ctx = make_context(model_dir, metrics, [{}])
    if model_yaml is not None:
        ctx.model_yaml_config = model_yaml
    h = SentimentHandler()
    h.initialize(ctx)
    return h


def test_the_score_uses_the_calibration_temperature_of_model_config(tmp_path, metrics) -> None:
    import json

    directory = tiny_artifacts(tmp_path, embedding_dim=16, n_filters=8)
    record = json.loads((directory / "model_config.json").read_text())
    record["calibration"] = {"temperature": 2.5, "fitted_on": "validation"}
    (directory / "model_config.json").write_text(json.dumps(record))
    h = initialized(directory, metrics)
    (answer,), _ = serve(h, directory, metrics, [(CORPUS[0], False)])
    assert answer["score"] == pytest.approx(1 / (1 + math.exp(-answer["logit"] / 2.5)), abs=1e-12)
    assert h.describe_handle()["calibration"]["temperature"] == 2.5


def test_a_corrupt_weights_file_stops_the_worker_with_one_line(tmp_path, metrics) -> None:
    import json

    from handler.checksums import sha256

    directory = tiny_artifacts(tmp_path, embedding_dim=16, n_filters=8)
    names = ["weights.safetensors", "vocab.json", "model_config.json"]
    (directory / "checksums.json").write_text(json.dumps({n: sha256(directory / n) for n in names}))
    initialized(directory, metrics)  # intact: loads
    weights = directory / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(RuntimeError, match=r"^weights.safetensors: sha256 mismatch, archive is corrupt$"):
        initialized(directory, metrics)


def test_an_unknown_key_in_the_handler_section_stops_the_worker(model_dir, metrics) -> None:
    from handler.settings import SettingsError

    model_yaml = yaml.safe_load((REPO / "model-config.yaml").read_text())
    model_yaml["handler"]["explain"]["n_step"] = 8
    with pytest.raises(SettingsError, match="unknown key 'n_step'; did you mean 'n_steps'"):
        initialized(model_dir, metrics, model_yaml)


def test_replies_are_compact_json_text_with_a_json_content_type(handler, model_dir, metrics) -> None:
    """TorchServe would re-encode a dict reply with json.dumps(indent=2), a quarter of the worker's
    time per explained review: the handler hands over compact JSON text and says it is JSON."""
    ctx = make_context(model_dir, metrics, [{"explain": "True"}, {"explain": "False"}])
    raw = handler.handle([{"body": CORPUS[0].encode()}, {"body": b'{"text": 1}'}], ctx)
    assert all(isinstance(r, str) for r in raw)
    assert [json.dumps(json.loads(r), separators=(",", ":")) for r in raw] == raw
    assert [ctx.get_response_content_type(i) for i in range(2)] == ["application/json"] * 2
    explained, failed = (json.loads(r) for r in raw)
    assert "attributions" in explained and failed["code"] == 400


def test_a_json_typed_body_that_is_not_an_object_is_a_400_beside_answers(handler, model_dir, metrics) -> None:
    """The worker decodes a JSON-typed body itself (the value, or its bytes when it does not parse)
    and files the body's type under its name, ``body``: the handler reads the type there."""
    typed = {"body": {"content-type": "application/json"}}
    rows = [
        ({"body": "just a string"}, typed),  # '"just a string"'
        ({"body": b"good movie]"}, typed),  # does not parse: the worker forwards the bytes
        ({"body": {"text": "Best film ever"}}, typed),
        ({"body": "just a string"}, {"body": {"content-type": "text/plain"}}),  # text: the review
        ({"body": b"good movie]"}, {}),  # no type
    ]
    ctx = make_context(model_dir, metrics, [{"explain": "False", **headers} for _, headers in rows])
    replies = encode_and_parse(handler.handle([row for row, _ in rows], ctx), ctx)
    assert [r.status for r in replies] == [400, 400, 200, 200, 200]
    assert "JSON string" in replies[0].body["message"] and "does not parse" in replies[1].body["message"]
    assert replies[3].body["n_tokens"] == 3 and replies[4].body["n_tokens"] == 3


def test_each_initialize_counts_one_worker_start(model_dir, metrics, caplog) -> None:
    caplog.set_level("INFO")
    initialized(model_dir, metrics)
    initialized(model_dir, metrics)
    lines = metric_lines(caplog, "imdb_worker_starts_total")
    assert len(lines) == 2, lines
    assert all(line.startswith("[METRICS]imdb_worker_starts_total.Count:1|") for line in lines)
    assert all("model_name:imdb_sentiment,model_version:1.0" in line for line in lines)
