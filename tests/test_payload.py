"""Request decoding and validation, one request at a time."""

import json

import pytest
from helpers import REPO  # noqa: F401

from handler.payload import (
    Limits,
    Request,
    RequestError,
    decode,
    error_body,
    kserve_response,
    parse_request,
    prediction,
)

LIMITS = Limits(max_chars=1000, max_n_steps=512, max_instances=4)


@pytest.mark.parametrize(
    "item",
    [
        {"body": b"Great film"},
        {"body": "Great film"},
        {"data": bytearray(b"Great film")},
        {"body": {"text": "Great film"}},
        {"body": b'{"text": "Great film"}'},
        {"text": "Great film"},  # KServe v1 instance
        {"name": "input-0", "shape": [1], "datatype": "BYTES", "data": "Great film"},  # KServe v2 input
        "Great film",
    ],
)
def test_accepted_request_shapes_give_the_review_text(item):
    assert decode(item, LIMITS).text == "Great film"


def test_json_options_are_validated_and_kept():
    review = decode({"body": {"text": "ok", "n_steps": 64, "method": "exact", "adaptive": False, "rtol": 1e-4}}, LIMITS)
    assert review.options == {"n_steps": 64, "method": "exact", "adaptive": False, "rtol": 1e-4}


@pytest.mark.parametrize(
    "item, code, words",
    [
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
    ],
)
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


def v2_input(name: str, *texts, datatype: str = "BYTES", shape: list | None = None) -> dict:
    return {"name": name, "shape": [len(texts)] if shape is None else shape, "datatype": datatype, "data": list(texts)}


@pytest.mark.parametrize(
    "row",
    [
        {"body": b"Great film"},
        {"body": '{"instances": ["text/plain is a review, not KServe"]}'},
        {"body": {"text": "Great film"}},
        {"body": b'{"text": "Great film"}'},
        {"body": b'{"text": "unterminated'},  # decode reports it
        {"body": [{"text": "Great film"}]},
    ],
)
def test_plain_requests_are_one_instance_the_row_itself(row):
    assert parse_request(row, LIMITS) == Request([row])


def test_kserve_v1_instances_each_become_a_review():
    for body in (
        {"instances": [{"text": "Great film"}, "Bad film"]},
        b'{"instances": [{"text": "Great film"}, "Bad film"]}',
    ):
        request = parse_request({"body": body}, LIMITS)
        assert request.protocol == "v1"
        assert [decode(i, LIMITS).text for i in request.instances] == ["Great film", "Bad film"]


def test_kserve_v2_data_elements_each_become_a_review():
    body = {
        "id": "r-1",
        "inputs": [v2_input("a", "Great film", "Bad film"), v2_input("b", {"text": "Fine", "n_steps": 8})],
    }
    request = parse_request({"body": body}, LIMITS)
    assert (request.protocol, request.id, request.inputs) == ("v2", "r-1", [("a", 2), ("b", 1)])
    reviews = [decode(i, LIMITS) for i in request.instances]
    assert [r.text for r in reviews] == ["Great film", "Bad film", "Fine"] and reviews[2].options == {"n_steps": 8}
    assert parse_request({"body": {"id": " ", "inputs": [v2_input("a", "x")]}}, LIMITS).id is None


@pytest.mark.parametrize(
    "body, words",
    [
        ({"instances": "Great film"}, "non-empty list"),
        ({"instances": []}, "non-empty list"),
        ({"instances": ["ok"] * 5}, "at most 4"),
        ({"inputs": {"name": "a"}}, "non-empty list"),
        ({"inputs": []}, "non-empty list"),
        ({"inputs": ["Great film"]}, "'name'"),
        ({"inputs": [v2_input("a", 5, datatype="INT64")]}, "BYTES"),
        ({"inputs": [{"name": "a", "datatype": "BYTES", "data": ["ok"]}]}, "shape"),
        ({"inputs": [v2_input("a", "ok", "ok", shape=[3])]}, "shape [3]"),
        ({"inputs": [v2_input("a", shape=[0])]}, "non-empty list"),
        ({"inputs": [v2_input("a", "ok", "ok", "ok"), v2_input("b", "ok", "ok")]}, "at most 4"),
    ],
)
def test_malformed_kserve_bodies_are_a_400_for_the_request(body, words):
    with pytest.raises(RequestError) as err:
        parse_request({"body": body}, LIMITS)
    assert err.value.code == 400 and words in str(err.value)


def test_kserve_answers_v1_by_kind_and_v2_one_output_per_input():
    answers = [{"label": "pos"}, {"label": "neg"}, {"code": 400, "type": "BadRequest", "message": "empty"}]
    v1 = Request(["x", "y", "z"], "v1")
    assert kserve_response(v1, answers, False, "7", "m", "1.0") == {"predictions": answers}
    assert kserve_response(v1, answers, True, "7", "m", "1.0") == {"explanations": answers}
    v2 = Request(["x", "y", "z"], "v2", inputs=[("a", 2), ("b", 1)])
    assert kserve_response(v2, answers, False, "7", "m", "1.0") == {
        "id": "7",
        "model_name": "m",
        "model_version": "1.0",
        "outputs": [
            {"name": "a", "shape": [2], "datatype": "BYTES", "data": answers[:2]},
            {"name": "b", "shape": [1], "datatype": "BYTES", "data": answers[2:]},
        ],
    }
    v2.id = "mine"
    assert kserve_response(v2, answers, True, "7", "m", None)["id"] == "mine"
