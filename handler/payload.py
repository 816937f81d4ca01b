"""Request and response payloads: decode and validate one request, encode one answer.

Every function here works on a single request so that one bad request becomes one 4xx answer
and never touches the others of its batch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from handler.attribution import METHODS, Attribution


class RequestError(ValueError):
    """A client error in one request; ``code`` is its HTTP status."""

    def __init__(self, message: str, code: int = 400):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Limits:
    max_chars: int = 100_000  # body size guard, before tokenizing
    max_n_steps: int = 1024
    min_n_steps: int = 2
    max_instances: int = 64  # reviews in one KServe request (v1 instances, v2 BYTES elements)


@dataclass
class Review:
    text: str
    options: dict[str, Any] = field(default_factory=dict)  # explanation overrides, validated


_OPTION_TYPES = {"n_steps": int, "method": str, "adaptive": bool, "rtol": float}


def decode(item: Any, limits: Limits) -> Review:
    """One request body -> Review. Accepts TorchServe rows ({"data"| "body": ...}), raw bytes/str,
    JSON objects with "text" (KServe v1 instances may also use "data"), and KServe v2 BYTES inputs."""
    if isinstance(item, dict) and ("body" in item or "data" in item) and "text" not in item:
        body = item.get("data") if item.get("data") is not None else item.get("body")
        if isinstance(item.get("datatype"), str) and item["datatype"] != "BYTES":
            raise RequestError("KServe v2 input must have datatype BYTES (the review text)")
    else:
        body = item
    if isinstance(body, (bytes, bytearray)):
        if len(body) > 4 * limits.max_chars:
            raise RequestError(f"request body is larger than {limits.max_chars} characters", 413)
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as e:
            raise RequestError(f"request body is not valid UTF-8 (byte {e.start})") from None
        stripped = body.lstrip()
        if stripped.startswith("{"):
            try:
                body = json.loads(body)
            except json.JSONDecodeError as e:
                raise RequestError(
                    f"request body looks like JSON but does not parse: {e.msg} at char {e.pos}"
                ) from None
            except RecursionError:  # hostile nesting, e.g. {"a": {"a": ... 100,000 levels
                raise RequestError("request body nests JSON too deeply") from None
    if isinstance(body, list) and len(body) == 1:
        body = body[0]  # KServe v2 BYTES data arrives as a one-element list
    if isinstance(body, dict):
        return _from_json(body, limits)
    if isinstance(body, str):
        return Review(_check_text(body, limits))
    raise RequestError(f"expected review text or a JSON object with 'text', got {type(body).__name__}")


@dataclass
class Request:
    """One TorchServe row as a list of instances, each to go through ``decode``.

    ``protocol`` is None for a plain request (its one instance is the row itself), else "v1" or
    "v2". For v2, ``inputs`` keeps (name, number of reviews) per input in order, so that the
    answers can be split back into outputs, and ``id`` the body's id.
    """

    instances: list[Any]
    protocol: str | None = None
    inputs: list[tuple[str, int]] = field(default_factory=list)
    id: str | None = None


def parse_request(row: Any, limits: Limits) -> Request:
    """Tell a KServe v1 ({"instances": [...]}) or v2 ({"inputs": [...]}) body from a plain one.

    The handler, not TorchServe's service envelope, reads KServe bodies: the envelopes read only
    request 0 of a frontend batch, this works per row. A body that is not a JSON object with
    "instances" or "inputs" is a plain request and left to ``decode`` (which reports its errors).
    A malformed KServe body raises RequestError: there is no instance to answer in its place.
    """
    body = row
    if isinstance(row, dict) and ("body" in row or "data" in row):
        body = row["data"] if row.get("data") is not None else row.get("body")
    if isinstance(body, (bytes, bytearray)) and bytes(body).lstrip().startswith(b"{"):
        try:
            body = json.loads(body)
        except (ValueError, RecursionError):
            return Request([row])  # decode says what is wrong with it
    if isinstance(body, dict) and "instances" in body:
        return Request(_instances(body["instances"], "'instances'", limits), "v1")
    if isinstance(body, dict) and "inputs" in body:
        return _v2_request(body, limits)
    return Request([row])


def _instances(items: Any, what: str, limits: Limits) -> list:
    if not isinstance(items, list) or not items:
        raise RequestError(f"{what} must be a non-empty list")
    if len(items) > limits.max_instances:
        raise RequestError(f"at most {limits.max_instances} reviews in one KServe request, got {len(items)}")
    return items


def _v2_request(body: dict, limits: Limits) -> Request:
    """v2 (Open Inference Protocol): each element of a BYTES input's data is one review."""
    inputs = _instances(body["inputs"], "'inputs'", limits)
    request = Request([], "v2", id=body.get("id") if isinstance(body.get("id"), str) and body["id"].strip() else None)
    for k, item in enumerate(inputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise RequestError(f"input {k} must be an object with a 'name'")
        if item.get("datatype") != "BYTES":
            raise RequestError(f"input '{item['name']}' must have datatype BYTES (the review text)")
        data, shape = item.get("data"), item.get("shape")
        if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise RequestError(f"input '{item['name']}' needs a 'shape' list of sizes")
        data = _instances(data, f"'data' of input '{item['name']}'", limits)
        if math.prod(shape) != len(data):
            raise RequestError(f"input '{item['name']}' has shape {shape} but {len(data)} data elements")
        request.instances += data
        request.inputs.append((item["name"], len(data)))
    _instances(request.instances, "'inputs'", limits)  # the limit holds for the request, not per input
    return request


def kserve_response(
    request: Request,
    answers: list[dict],
    explain: bool,
    request_id: str | None,
    model_name: str,
    model_version: str | None,
) -> dict:
    """The KServe answer of one request; ``answers`` holds one dict (or error body) per instance.

    v2 outputs mirror the inputs: one output per input, named like it, with one answer per review.
    """
    if request.protocol == "v1":
        return {"explanations" if explain else "predictions": answers}
    outputs, start = [], 0
    for name, n in request.inputs:
        outputs.append({"name": name, "shape": [n], "datatype": "BYTES", "data": answers[start : start + n]})
        start += n
    return {
        "id": request.id or request_id,
        "model_name": model_name,
        "model_version": model_version,
        "outputs": outputs,
    }


def _from_json(obj: dict, limits: Limits) -> Review:
    text = obj.get("text", obj.get("data"))
    if text is None:
        raise RequestError("JSON body needs a 'text' field with the review")
    if not isinstance(text, str):
        raise RequestError(f"'text' must be a string, got {type(text).__name__}")
    unknown = set(obj) - {"text", "data"} - set(_OPTION_TYPES)
    if unknown:
        raise RequestError(f"unknown field(s): {', '.join(sorted(unknown))}; allowed: text, {', '.join(_OPTION_TYPES)}")
    options = {}
    for key, kind in _OPTION_TYPES.items():
        if key not in obj:
            continue
        value = obj[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise RequestError(f"'{key}' must be {kind.__name__}, got {type(value).__name__}")
        options[key] = value
    if "n_steps" in options and not limits.min_n_steps <= options["n_steps"] <= limits.max_n_steps:
        raise RequestError(f"'n_steps' must be between {limits.min_n_steps} and {limits.max_n_steps}")
    if "method" in options and options["method"] not in METHODS:
        raise RequestError(f"'method' must be one of {', '.join(METHODS)}")
    if "rtol" in options and not (math.isfinite(options["rtol"]) and 0 < options["rtol"] < 1):
        raise RequestError("'rtol' must be a number in (0, 1)")
    return Review(_check_text(text, limits), options)


def _check_text(text: str, limits: Limits) -> str:
    if len(text) > limits.max_chars:
        raise RequestError(f"review is longer than {limits.max_chars} characters", 413)
    if not text.strip():
        raise RequestError("review text is empty")
    return text


def error_body(err: RequestError) -> dict:
    return {"code": err.code, "type": "BadRequest" if err.code == 400 else "RequestError", "message": str(err)}


def prediction(logit: float, labels: tuple[str, str], n_tokens: int, truncated: bool, n_unknown: int) -> dict:
    """The answer of /predictions; the explanation adds to it."""
    p_pos = 1.0 / (1.0 + math.exp(-logit)) if logit > -700 else 0.0
    return {
        "label": labels[1] if logit > 0 else labels[0],
        "score": p_pos,
        "probabilities": {labels[0]: 1.0 - p_pos, labels[1]: p_pos},
        "logit": logit,
        "n_tokens": n_tokens,
        "truncated": truncated,
        "unknown_tokens": n_unknown,
    }


def explanation(base: dict, tokens: list[str], attr: Attribution, row: int) -> dict:
    """Add Layer-IG fields for ``row`` of a batch result; padding is excluded from the tokens."""
    raw = attr.attributions[row, : len(tokens)].tolist()
    norm = math.sqrt(sum(a * a for a in raw)) or 1.0
    return {
        **base,
        "tokens": tokens,
        "attributions": raw,
        "attributions_normalized": [a / norm for a in raw],
        "delta": float(attr.delta[row]),
        "reference_logit": float(attr.ref_logits[row]),
        "target": "logit",
        "method": attr.method,
        "n_steps": int(attr.n_steps[row]),
        "engine": attr.engine,
    }
