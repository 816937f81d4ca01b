"""Request decoding and validation, one request at a time."""

import json

import pytest

from handler.payload import (
    Limits,
    Request,
    RequestError,
    error_body,
    explanation,
    kserve_response,
    parse_request,
    prediction,
    read_body,
    review,
    torchserve_row,
)
from handler.settings import HandlerSettings
from tests.helpers import REPO  # noqa: F401


def read_row(row, limits, content_type=None):
    """A TorchServe row read as the handler reads it (``torchserve_row``, then ``read_body``)."""
    body, form = torchserve_row(row, content_type)
    return read_body(body, limits, form)


DEFAULTS = HandlerSettings().explain.ig(on_gpu=False)
LIMITS = Limits(DEFAULTS, max_chars=2000, max_instances=4)


def decode(row, limits: Limits = LIMITS, content_type=None):
    """A plain request's one review, as the handler reads it: body, request, review."""
    (instance,) = parse_request(read_row(row, limits, content_type), limits).instances
    return review(instance, limits)


@pytest.mark.parametrize(
    "row",
    [
        {"body": b"Great film"},  # no content type: bytes
        {"body": "Great film"},  # text/*: TorchServe decodes it
        {"data": bytearray(b"Great film")},
        {"body": {"text": "Great film"}},  # application/json: TorchServe parses it
        {"body": b'{"text": "Great film"}'},
        {"body": '{"text": "Great film"}'},  # JSON sent as text/plain is still JSON
        {"body": [{"text": "Great film"}]},
        {"text": bytearray(b"Great film")},  # curl -d 'text=Great film' (form)
        {"Great film": bytearray()},  # curl -d 'Great film=' (form, a field with an empty value)
    ],
)
def test_accepted_request_shapes_give_the_review_text(row):
    assert decode(row).text == "Great film"


def test_json_options_are_validated_and_kept():
    got = decode({"body": {"text": "ok", "n_steps": 64, "method": "gausslegendre", "adaptive": False, "rtol": 1e-4}})
    assert (got.settings.n_steps, got.settings.method, got.settings.adaptive, got.settings.rtol) == (
        64,
        "gausslegendre",
        False,
        1e-4,
    )
    assert decode({"body": b"ok"}).settings == DEFAULTS  # no options: the configured defaults


@pytest.mark.parametrize(
    "row",
    [
        {"body": '{"text": "ok", "n_steps": 8}'},  # text/plain
        {"body": b'  {"text": "ok", "n_steps": 8}'},  # no type
        {"text": bytearray(b"ok"), "n_steps": bytearray(b"8")},  # form fields
        {'{"text": "ok", "n_steps": 8}': bytearray()},  # form, a JSON name with an empty value
    ],
)
def test_options_are_read_whatever_the_content_type(row):
    assert decode(row).settings.n_steps == 8


@pytest.mark.parametrize(
    "row",
    [
        {"body": '{"text": "ok", "colour": "red"}'},
        {"text": bytearray(b"ok"), "colour": bytearray(b"red")},
    ],
)
def test_unknown_options_are_never_dropped_silently(row):
    with pytest.raises(RequestError, match="unknown field"):
        decode(row)


def test_text_that_does_not_start_with_a_brace_is_the_review_even_if_it_mentions_json():
    assert decode({"body": 'I said {"text": 1} and [1, 2]'}).text == 'I said {"text": 1} and [1, 2]'
    assert decode({"body": "[SPOILERS] great"}).text == "[SPOILERS] great"


@pytest.mark.parametrize(
    "row, code, words",
    [
        ({"body": b""}, 400, "empty"),
        ({"body": b"   \n\t "}, 400, "empty"),
        ({"body": b"\xff\xfe bad"}, 400, "UTF-8"),
        ({"body": {"review": "x"}}, 400, "'text'"),
        ({"body": {"text": 5}}, 400, "string"),
        ({"body": {"text": "ok", "n_steps": 1}}, 400, "n_steps"),
        ({"body": {"text": "ok", "n_steps": 1025}}, 400, "n_steps"),
        ({"body": {"text": "ok", "n_steps": "50"}}, 400, "int"),
        ({"body": {"text": "ok", "n_steps": True}}, 400, "int"),
        ({"body": {"text": "ok", "method": "simpson"}}, 400, "method"),
        ({"body": {"text": "ok", "ties": "last"}}, 400, "ties"),
        ({"body": {"text": "ok", "rtol": 0}}, 400, "rtol"),
        ({"body": {"text": "ok", "evil": 1}}, 400, "unknown field"),
        ({"body": b'{"text": "unterminated'}, 400, "JSON"),
        ({"body": b'{"text": "ok", "n_steps": ' + b"9" * 5000 + b"}"}, 400, "JSON"),  # int-digit limit
        ({"body": b'{"text": "good \\ud800 movie"}'}, 400, "Unicode"),  # a lone surrogate
        ({"body": 3.5}, 400, "expected"),
        ({"body": [1, 2]}, 400, "expected"),
        ({}, 400, "empty form body"),  # what TorchServe hands over for curl -d 'great film'
        ({"body": "x" * 2001}, 413, "longer"),
        ({"body": b"x" * 8001}, 413, "larger"),
    ],
)
def test_bad_requests_raise_a_clear_client_error(row, code, words):
    with pytest.raises(RequestError) as err:
        decode(row)
    assert err.value.code == code and words in str(err.value)
    assert err.value.phrase == {400: "Bad Request", 413: "Payload Too Large"}[code]


@pytest.mark.parametrize("name", ["é", "😀", "a\nb", "\ud800", "n" * 70_000])
def test_user_supplied_names_reach_the_message_escaped_and_short(name):
    for body in (
        {"text": "good", name: 1},
        {"inputs": [{"name": name, "shape": [1], "datatype": "FP32", "data": [1.0]}]},
    ):
        with pytest.raises(RequestError) as err:
            decode({"body": body})
        message = str(err.value)
        assert message.isascii() and "\n" not in message and len(message) < 200, message
        assert err.value.phrase.isascii() and len(err.value.phrase) <= 20


# What TorchServe 0.12's worker hands over for a JSON-typed body (ts/protocol/otf_message_handler.py,
# _retrieve_input_data: json.loads of the body, or the raw bytes when that fails).
JSON_TYPED_NOT_OBJECTS = [
    ({"body": "just a string"}, "JSON string"),  # '"just a string"'
    ({"body": b"good movie]"}, "does not parse"),  # 'good movie]': the worker forwards the bytes
    ({"body": b"good movie"}, "does not parse"),
    ({"body": [{"text": "Great film"}]}, "JSON array"),
    ({"body": ["Great film"]}, "JSON array"),
    ({"body": 5}, "JSON number"),
    ({"body": True}, "JSON boolean"),
    ({"body": None}, "JSON null"),
    ({"body": b"\xff\xfe"}, "UTF-8"),
    ({"body": b'{"text": "ok", "n_steps": ' + b"9" * 5000 + b"}"}, "Python cannot read"),
]


@pytest.mark.parametrize("row, words", JSON_TYPED_NOT_OBJECTS)
@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"])
def test_a_json_typed_body_that_is_not_a_json_object_is_a_400_not_a_review(row, words, content_type):
    with pytest.raises(RequestError) as err:
        decode(row, content_type=content_type)
    assert err.value.code == 400 and words in str(err.value), str(err.value)


def test_a_json_typed_object_is_read_and_untyped_bodies_keep_their_rule():
    assert decode({"body": {"text": "Great film"}}, content_type="application/json").text == "Great film"
    assert decode({"body": b'{"text": "Great film"}'}, content_type="application/json").text == "Great film"
    # The same values without a JSON type are review text (text/plain, or no type at all).
    assert decode({"body": '"just a string"'}, content_type="text/plain").text == '"just a string"'
    assert decode({"body": b"good movie]"}, content_type="application/octet-stream").text == "good movie]"
    assert decode({"body": b"good movie]"}).text == "good movie]"


@pytest.mark.parametrize(
    "text",
    ["\u200b" * 3, "\x00" * 20, "\ufeff", "\u2028\u200b\u2029", " \u200b\t\x00\u00a0\u3000\u200d \n", "\x1b\x7f"],
)
def test_a_review_of_only_invisible_characters_is_empty(text):
    for row in ({"body": text}, {"body": text.encode()}, {"body": {"text": text}}):
        with pytest.raises(RequestError, match="review text is empty") as err:
            decode(row)
        assert err.value.code == 400 and "invisible" in str(err.value)
    with pytest.raises(RequestError, match="invisible"):
        review({"text": text}, LIMITS)  # a KServe instance too


def test_invisible_characters_inside_a_review_are_kept():
    assert decode({"body": "\u200bGreat\x00 film\ufeff"}).text == "\u200bGreat\x00 film\ufeff"
    assert decode({"body": "\u0301"}).text == "\u0301"  # a lone combining mark is a mark, not nothing


def test_error_bodies_keep_torchserves_shape_and_add_the_request_id():
    body = error_body(RequestError("review text is empty"), "req-7")
    assert body == {"code": 400, "type": "BadRequest", "message": "review text is empty", "request_id": "req-7"}
    assert error_body(RequestError("too long", 413), None)["type"] == "RequestError"


def test_prediction_fields_and_probabilities():
    p = prediction(2.0, 0.75, ("neg", "pos"), n_tokens=5, truncated=False, n_unknown=1)
    assert (p["label"], p["score"], p["logit"]) == ("pos", 0.75, 2.0)
    assert p["probabilities"] == {"neg": 0.25, "pos": 0.75}
    assert (p["n_tokens"], p["truncated"], p["unknown_tokens"]) == (5, False, 1)


def test_the_label_follows_the_raw_logit_even_where_the_score_rounds_to_one_half():
    assert prediction(1e-20, 0.5, ("neg", "pos"), 5, False, 0)["label"] == "pos"
    assert prediction(-1e-20, 0.5, ("neg", "pos"), 5, False, 0)["label"] == "neg"


def test_explanations_report_the_tie_rule():
    import torch

    from handler.attribution import Attribution

    attr = Attribution(
        torch.tensor([[3.0, 4.0]]),
        torch.zeros(1),
        torch.ones(1),
        torch.zeros(1),
        torch.zeros(1),
        "exact",
        "fast",
        ties="first",
    )
    answer = explanation({"label": "pos"}, ["a", "b"], attr, 0)
    assert answer["ties"] == "first" and answer["attributions_normalized"] == [0.6, 0.8]


def test_hostile_json_nesting_is_a_client_error_not_a_crash():
    with pytest.raises(RequestError, match="deeply"):
        decode({"body": b'{"a":' * 200_000}, Limits(DEFAULTS, max_chars=2_000_000))


def v2_input(name: str, *texts, datatype: str = "BYTES", shape: list | None = None) -> dict:
    return {"name": name, "shape": [len(texts)] if shape is None else shape, "datatype": datatype, "data": list(texts)}


@pytest.mark.parametrize("body", ["Great film", {"text": "Great film"}, {"review": "x"}])
def test_plain_requests_are_one_instance_the_body_itself(body):
    assert parse_request(body, LIMITS) == Request([body])


def test_kserve_v1_instances_each_become_a_review():
    for row in (
        {"body": {"instances": [{"text": "Great film"}, "Bad film"]}},
        {"body": b'{"instances": [{"text": "Great film"}, "Bad film"]}'},
        {"body": '{"instances": [{"text": "Great film"}, "Bad film"]}'},  # sent as text/plain
    ):
        request = parse_request(read_row(row, LIMITS), LIMITS)
        assert request.protocol == "v1"
        assert [review(i, LIMITS).text for i in request.instances] == ["Great film", "Bad film"]


def test_kserve_v2_data_elements_each_become_a_review():
    body = {
        "id": "r-1",
        "inputs": [v2_input("a", "Great film", "Bad film"), v2_input("b", {"text": "Fine", "n_steps": 8})],
    }
    request = parse_request(body, LIMITS)
    assert (request.protocol, request.id) == ("v2", "r-1")
    reviews = [review(i, LIMITS) for i in request.instances]
    assert [r.text for r in reviews] == ["Great film", "Bad film", "Fine"] and reviews[2].settings.n_steps == 8
    assert parse_request({"id": " ", "inputs": [v2_input("a", "x")]}, LIMITS).id is None


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
        ({"inputs": [v2_input("a", "ok")], "outputs": [{"name": "text"}]}, "unknown output"),
        ({"inputs": [v2_input("a", "ok")], "outputs": {"name": "answer"}}, "list of objects"),
    ],
)
def test_malformed_kserve_bodies_are_a_400_for_the_request(body, words):
    with pytest.raises(RequestError) as err:
        parse_request(body, LIMITS)
    assert err.value.code == 400 and words in str(err.value)


@pytest.mark.parametrize(
    "body, message",
    [
        ({"inputs": [v2_input("a", "ok"), "b"]}, "input 1 must be an object with a 'name'"),
        ({"inputs": [{"name": "a", "shape": "x"}]}, 'input "a" must have datatype BYTES (the review text)'),
        ({"inputs": [{"name": "a", "datatype": "BYTES", "shape": [-1]}]}, "input \"a\" needs a 'shape' list of sizes"),
        (
            {"inputs": [{"name": "a", "datatype": "BYTES", "shape": [2]}]},
            "'data' of input \"a\" must be a non-empty list",
        ),
        (
            {"inputs": [v2_input("a", "ok", shape=[2]), v2_input("b", datatype="INT64")]},
            'input "a" has shape [2] but 1',
        ),
        ({"inputs": [v2_input("a", "ok")], "outputs": [{"name": "text"}], "id": 5}, 'unknown output "text"'),
    ],
)
def test_a_v2_body_with_several_faults_gets_the_first_in_reading_order(body, message):
    with pytest.raises(RequestError) as err:
        parse_request(body, LIMITS)
    assert str(err.value).startswith(message)


@pytest.mark.parametrize(
    "row, message",
    [
        (
            {"body": {"text": "ok", "n_steps": "x", "zz": 1, "aa": 1, "mm": 1, "bb": 1}},
            'unknown field(s): "aa", "bb", "mm" ...',
        ),
        ({"body": {"text": "ok", "ties": 5, "n_steps": "x"}}, "'ties' must be str, got int"),  # in the order sent
        ({"body": {"text": "ok", "rtol": 2, "n_steps": 0}}, "'rtol' must be a number in (0, 1)"),  # an int is a number
        ({"body": {"text": "ok", "rtol": float("nan")}}, "'rtol' must be a number in (0, 1)"),
        ({"body": {"text": "ok", "method": "simpson"}}, "bad explanation option: method must be"),
        # A form: every value is decoded before any is refused as not text.
        ({"n_steps": 5, "text": bytearray(b"\xff")}, "request body is not valid UTF-8 (byte 0)"),
    ],
)
def test_options_with_several_faults_get_the_first_in_checking_order(row, message):
    with pytest.raises(RequestError) as err:
        decode(row)
    assert str(err.value).startswith(message)


def test_kserve_answers_v1_by_kind_and_v2_as_one_output_of_json_strings():
    answers = [{"label": "pos"}, {"label": "neg"}, {"code": 400, "type": "BadRequest", "message": "empty"}]
    v1 = Request(["x", "y", "z"], "v1")
    assert kserve_response(v1, answers, False, "7", "m", "1.0") == {"predictions": answers}
    assert kserve_response(v1, answers, True, "7", "m", "1.0") == {"explanations": answers}
    v2 = Request(["x", "y", "z"], "v2")
    got = kserve_response(v2, answers, False, "7", "m", "1.0")
    assert got == {
        "id": "7",
        "model_name": "m",
        "model_version": "1.0",
        "outputs": [{"name": "answer", "shape": [3], "datatype": "BYTES", "data": got["outputs"][0]["data"]}],
    }
    assert [json.loads(e) for e in got["outputs"][0]["data"]] == answers  # each element a JSON string
    v2.id = "mine"
    assert kserve_response(v2, answers, True, "7", "m", None)["id"] == "mine"


def test_a_v2_request_may_ask_for_the_answer_output_by_name():
    body = {"inputs": [v2_input("text", "ok")], "outputs": [{"name": "answer", "parameters": {"binary_data": False}}]}
    assert parse_request(body, LIMITS).instances == ["ok"]


def test_json_round_trip_of_an_error_body_is_ascii():
    body = error_body(RequestError("unknown field(s): " + json.dumps("😀")), "1")
    assert json.dumps(body).isascii()
