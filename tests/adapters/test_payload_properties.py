"""Property tests (Hypothesis): any bytes, any text, any JSON and any form body give a 4xx or a
valid answer, never an exception, and never change the answers of the rest of the batch."""

from __future__ import annotations

import json
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handler.payload import (
    INVISIBLE,
    OPTION_TYPES,
    Limits,
    RequestError,
    parse_request,
    read_body,
    review,
    torchserve_row,
)
from handler.settings import HandlerSettings
from tests.adapters.test_handler import CORPUS, handler, make_context, metrics, model_dir  # noqa: F401 (fixtures)
from tests.frames import encode_and_parse


def read_row(row, limits):
    """A TorchServe row read as the handler reads it (``torchserve_row``, then ``read_body``)."""
    body, form = torchserve_row(row)
    return read_body(body, limits, form)


LIMITS = Limits(HandlerSettings().explain.ig(on_gpu=False), max_chars=3000, max_instances=4)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
# Objects that look like ours: a text, some options (good, bad or unknown), maybe KServe wrappers.
options = st.dictionaries(st.sampled_from([*OPTION_TYPES, "text", "data", "é", "a\nb"]), json_values, max_size=4)
ours = st.one_of(
    st.builds(lambda o, t: {**o, "text": t}, options, st.text(max_size=60) | json_values),
    st.builds(lambda items: {"instances": items}, st.lists(json_values | st.text(max_size=40), max_size=5)),
    st.builds(
        lambda name, dtype, data, shape: {"inputs": [{"name": name, "datatype": dtype, "data": data, "shape": shape}]},
        st.text(max_size=8),
        st.sampled_from(["BYTES", "FP32", None]),
        json_values,
        json_values,
    ),
)
bodies = st.one_of(
    st.binary(max_size=300),  # no content type
    st.text(max_size=300),  # text/*, surrogates included
    ours,  # application/json, parsed by TorchServe
    ours.map(lambda o: json.dumps(o).encode()),  # JSON with no type
    json_values.map(lambda v: json.dumps(v, ensure_ascii=False)),  # any JSON as text/plain
)
form = st.dictionaries(st.text(max_size=40), st.binary(max_size=40), min_size=1, max_size=3)
rows = bodies.map(lambda b: {"body": b}) | form


def answer_or_error(row) -> list:
    """What the handler does with a row, without the model: each review decoded, or a RequestError."""
    try:
        request = parse_request(read_row(row, LIMITS), LIMITS)
    except RequestError as err:
        return [err]
    out = []
    for instance in request.instances:
        try:
            out.append(review(instance, LIMITS))
        except RequestError as err:
            out.append(err)
    return out


@settings(max_examples=1000, deadline=None)
@given(rows)
def test_decoding_any_row_gives_reviews_or_client_errors_never_an_exception(row):
    for result in answer_or_error(row):
        if isinstance(result, RequestError):
            assert result.code in (400, 413) and result.phrase.isascii()
            assert str(result).isascii() and "\n" not in str(result)
        else:
            assert result.text.strip() and len(result.text) <= LIMITS.max_chars
            assert any(unicodedata.category(c) not in INVISIBLE for c in result.text)  # something to read
            result.text.encode("utf-8")  # spaCy gets valid Unicode only


# What TorchServe's worker hands over for a body typed application/json: json.loads of it, or its
# bytes where that fails.
def as_the_worker_decodes_json(raw: bytes):
    try:
        return json.loads(raw.decode("utf-8"))
    except Exception:  # noqa: BLE001 - the worker's own catch-all
        return raw


json_typed = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    ours.map(lambda o: json.dumps(o).encode()),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
).map(as_the_worker_decodes_json)


@settings(max_examples=1000, deadline=None)
@given(json_typed)
def test_a_json_typed_body_is_a_json_object_or_a_400_never_review_text(value):
    body, form = torchserve_row({"body": value}, "application/json")
    try:
        read = read_body(body, LIMITS, form)
    except RequestError as err:
        assert err.code in (400, 413) and not isinstance(value, dict)
        return
    assert isinstance(read, dict) and read == value


def close(a, b, tol: float = 1e-6) -> bool:
    """Equal, floats within ``tol``, through dicts and lists."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= tol
    if isinstance(a, dict) and isinstance(b, dict):
        return _close_dicts(a, b, tol)
    if isinstance(a, list) and isinstance(b, list):
        return _close_lists(a, b, tol)
    return a == b


def _close_dicts(a: dict, b: dict, tol: float) -> bool:
    return a.keys() == b.keys() and all(close(a[k], b[k], tol) for k in a)


def _close_lists(a: list, b: list, tol: float) -> bool:
    return len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def alone(handler, model_dir, metrics):  # noqa: F811
    ctx = make_context(model_dir, metrics, [{"explain": "True"}, {"explain": "False"}])
    return [r.body for r in encode_and_parse(handler.handle([{"body": CORPUS[0]}, {"body": CORPUS[3]}], ctx), ctx)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(row=rows, explain=st.booleans())
def test_any_row_in_a_batch_gets_a_4xx_or_an_answer_and_the_others_are_unchanged(
    handler,  # noqa: F811
    model_dir,  # noqa: F811
    metrics,  # noqa: F811
    alone,
    row,
    explain,
):
    headers = [{"explain": "True"}, {"explain": str(explain)}, {"explain": "False"}]
    ctx = make_context(model_dir, metrics, headers)
    replies = encode_and_parse(handler.handle([{"body": CORPUS[0]}, row, {"body": CORPUS[3]}], ctx), ctx)
    fuzzed = replies[1]
    assert_the_others_are_unchanged([replies[0].body, replies[2].body], alone, refused_whole(fuzzed))
    assert_the_row_gets_a_4xx_or_an_answer(fuzzed)


def refused_whole(reply) -> bool:
    """A plain request's error: nothing of the request reached the model."""
    return reply.status != 200 and "code" in reply.body


def assert_the_others_are_unchanged(others: list, alone: list, fuzzed_refused_whole: bool) -> None:
    if fuzzed_refused_whole:  # nothing of it reached the model: exactly alone's answers
        assert others == alone
    for got, expected in zip(others, alone):  # else equal up to float summation order
        assert close(got, expected), (got, expected)


def assert_the_row_gets_a_4xx_or_an_answer(fuzzed) -> None:
    assert fuzzed.status in (200, 400, 413) and fuzzed.phrase.isascii() and len(fuzzed.phrase) <= 20
    if refused_whole(fuzzed):  # a plain request's error
        assert fuzzed.body["code"] == fuzzed.status and fuzzed.body["request_id"] == "1"
    elif fuzzed.status != 200:  # a KServe request whose reviews all failed: its envelope, errors inline
        (answers,) = [v for k, v in fuzzed.body.items() if k in ("predictions", "explanations", "outputs")]
        assert answers
