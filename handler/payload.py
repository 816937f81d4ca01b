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
                raise RequestError(f"request body looks like JSON but does not parse: {e.msg} at char {e.pos}") from None
            except RecursionError:  # hostile nesting, e.g. {"a": {"a": ... 100,000 levels
                raise RequestError("request body nests JSON too deeply") from None
    if isinstance(body, list) and len(body) == 1:
        body = body[0]  # KServe v2 BYTES data arrives as a one-element list
    if isinstance(body, dict):
        return _from_json(body, limits)
    if isinstance(body, str):
        return Review(_check_text(body, limits))
    raise RequestError(f"expected review text or a JSON object with 'text', got {type(body).__name__}")


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
