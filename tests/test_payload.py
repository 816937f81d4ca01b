"""Request decoding and validation, one request at a time."""
import json

import pytest

from helpers import REPO  # noqa: F401
from handler.payload import Limits, RequestError, decode, error_body, prediction

LIMITS = Limits(max_chars=1000, max_n_steps=512)


@pytest.mark.parametrize("item", [
    {"body": b"Great film"},
    {"body": "Great film"},
    {"data": bytearray(b"Great film")},
    {"body": {"text": "Great film"}},
    {"body": b'{"text": "Great film"}'},
    {"text": "Great film"},  # KServe v1 instance
    {"name": "input-0", "shape": [1], "datatype": "BYTES", "data": "Great film"},  # KServe v2 input
    "Great film",
])
def test_accepted_request_shapes_give_the_review_text(item):
    assert decode(item, LIMITS).text == "Great film"


def test_json_options_are_validated_and_kept():
    review = decode({"body": {"text": "ok", "n_steps": 64, "method": "exact", "adaptive": False, "rtol": 1e-4}}, LIMITS)
    assert review.options == {"n_steps": 64, "method": "exact", "adaptive": False, "rtol": 1e-4}


@pytest.mark.parametrize("item, code, words", [
    ({"body": b""}, 400, "empty"),
    ({"body": b"   \n\t "}, 400, "empty"),
    ({"body": b"\xff\xfe bad"}, 400, "UTF-8"),
    ({"body": {"review": "x"}}, 400, "'text'"),
    ({"body": {"text": 5}}, 400, "string"),
    ({"body": {"text": "ok", "n_steps": 1}}, 400, "n_steps"),
    ({"body": {"text": "ok", "n_steps": 513}}, 400, "n_steps"),
    ({"body": {"text": "ok", "n_steps": "50"}}, 400, "int"),
    ({"body": {"text": "ok", "n_steps": True}}, 400, "int"),
    ({"body": {"text": "ok", "method": "simpson"}}, 400, "method"),
    ({"body": {"text": "ok", "rtol": 0}}, 400, "rtol"),
    ({"body": {"text": "ok", "evil": 1}}, 400, "unknown field"),
    ({"body": b'{"text": "unterminated'}, 400, "JSON"),
    ({"body": 3.5}, 400, "expected"),
    ({"body": "x" * 1001}, 413, "longer"),
    ({"body": b"x" * 5000}, 413, "larger"),
    ({"name": "input-0", "datatype": "FP32", "data": [1.0]}, 400, "BYTES"),
])
def test_bad_requests_raise_a_clear_client_error(item, code, words):
    with pytest.raises(RequestError) as err:
        decode(item, LIMITS)
    assert err.value.code == code and words in str(err.value)
    body = error_body(err.value)
    assert body["code"] == code and json.dumps(body)


def test_prediction_fields_and_probabilities():
    p = prediction(2.0, ("neg", "pos"), n_tokens=5, truncated=False, n_unknown=1)
    assert p["label"] == "pos" and abs(p["score"] - 0.8807970779778823) < 1e-12
    assert abs(p["probabilities"]["neg"] + p["probabilities"]["pos"] - 1) < 1e-12
    assert prediction(-1000.0, ("neg", "pos"), 1, False, 0)["score"] == 0.0


def test_hostile_json_nesting_is_a_client_error_not_a_crash():
    with pytest.raises(RequestError, match="deeply"):
        decode({"body": b'{"a":' * 200_000}, Limits(max_chars=2_000_000))
