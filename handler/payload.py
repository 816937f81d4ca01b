"""Request and response payloads: one TorchServe row -> its reviews or a 4xx; one result -> its JSON.

Every function here works on a single request, so one bad request becomes one 4xx answer and
never touches the others of its batch. Each body is parsed once (``read_body``).

**Content types** (one rule, for curl's defaults too). A body is JSON when its type says JSON
(TorchServe's worker then hands over the parsed value, or the bytes when they do not parse) or
when it starts with ``{`` (after white space), whatever its type; it must then parse as a JSON
object: a JSON-typed string, array, number or unparsable body is a 400, never review text. Anything
else is the review text. Options are never dropped silently: an unknown field is a 400.

A form body (``application/x-www-form-urlencoded``, curl's default for ``-d``) is decoded by
TorchServe's frontend, which hands over only its ``name=value`` fields, URL-decoded (``+`` is a
space): a ``text`` field is the review and the other fields its options, as in JSON
(``curl -d 'text=great film' -d n_steps=8``). Without a ``text`` field the body is rebuilt from
the fields (``k=v`` joined by ``&``) and read by the rule above. A part without ``=`` never
reaches the handler (``curl -d 'great film'`` arrives as no field at all), so a form with no
field is a 400 that says how to send the review instead. A malformed percent escape
(``text=good%``, ``text=%ZZ``) fails in the frontend's own form decoder, a 500
(``ErrorDataDecoderException``) before any handler code runs: the frontend's to fix, documented.

**Errors** keep TorchServe's own error shape, so one check serves its errors and ours:
``{"code": <status>, "type": "...", "message": "...", "request_id": "..."}``. User-supplied
names in a message are escaped to ASCII and truncated; the HTTP reason phrase is a fixed ASCII
phrase per status (``RequestError.phrase``), never the message.
"""

from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import dataclass, replace
from typing import Any

from handler.attribution import Attribution, IGSettings
from handler.reply_json import compact_json

# Reason phrases handed to TorchServe: fixed, short, ASCII (the frontend counts characters, not bytes).
PHRASES = {400: "Bad Request", 413: "Payload Too Large"}
# The request options a client may send, and their JSON types.
OPTION_TYPES = {"method": str, "n_steps": int, "adaptive": bool, "rtol": float, "ties": str}
# The Open Inference Protocol tensors (v2): reviews in as BYTES elements of any input (declared as
# "text"), answers out as one BYTES output, one JSON-encoded answer per review, in input order.
INPUT, OUTPUT = "text", "answer"
_NAME_CHARS = 40
# What no one can see: controls (NUL, ...), format characters (U+200B zero width space, U+FEFF, ...)
# and separators. A review made only of these is empty, as a whitespace-only one is.
INVISIBLE = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
JSON_KINDS = {str: "string", list: "array", int: "number", float: "number", bool: "boolean", type(None): "null"}


class RequestError(ValueError):
    """A client error in one request; ``code`` is its HTTP status."""

    def __init__(self, message: str, code: int = 400):
        super().__init__(message)
        self.code = code

    @property
    def phrase(self) -> str:
        return PHRASES.get(self.code, "Bad Request")


def quoted(name: Any) -> str:
    """A user-supplied name for a message: ASCII-escaped, quoted and cut to a few dozen characters."""
    text = json.dumps(str(name), ensure_ascii=True)
    return text if len(text) <= _NAME_CHARS else text[: _NAME_CHARS - 4] + '..."'


@dataclass(frozen=True)
class Limits:
    """What one request may ask: its size, its KServe width and its explanation options."""

    explain: IGSettings  # the configured defaults; requests override some of them
    max_chars: int = 100_000  # body size guard, before tokenizing
    max_instances: int = 64  # reviews in one KServe request (v1 instances, v2 BYTES elements)


@dataclass
class Review:
    text: str
    settings: IGSettings  # the explanation settings this review asked for (the defaults when none)


@dataclass
class Request:
    """One request as a list of instances, each to go through ``review``.

    ``protocol`` is None for a plain request (its one instance is the body itself), else "v1" or
    "v2"; for v2, ``id`` is the body's id.
    """

    instances: list[Any]
    protocol: str | None = None
    id: str | None = None


# --- bodies -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JSONTyped:
    """A body whose content type says JSON, as the server decoded it: the parsed value, or the raw
    bytes where they did not parse. ``read_body`` takes only a JSON object from it."""

    value: Any


def is_json_type(content_type: Any) -> bool:
    """``application/json`` (any case, parameters such as ``charset`` ignored)."""
    return isinstance(content_type, str) and content_type.split(";")[0].strip().lower() == "application/json"


def torchserve_row(row: Any, content_type: str | None = None) -> tuple[Any, dict | None]:
    """(body, form fields) of a TorchServe row: ``{"body"|"data": ...}`` (bytes, text, or what the
    worker made of a JSON-typed body), or a form body's fields (the frontend's dict for
    ``x-www-form-urlencoded``). ``content_type``: the body's type, as the frontend passed it."""
    if isinstance(row, dict) and ("body" in row or "data" in row):
        body = row["data"] if row.get("data") is not None else row.get("body")
        return (JSONTyped(body) if is_json_type(content_type) else body), None
    if isinstance(row, dict):
        return None, row
    return row, None


def read_body(body: Any, limits: Limits, form: dict | None = None) -> dict | str:
    """A body (bytes, text or parsed JSON) or a form's fields -> the parsed JSON object or the
    review text, by the content-type rule."""
    if form is not None:
        return _form(form, limits)
    if isinstance(body, JSONTyped):
        return _json_object(body.value, limits)
    if isinstance(body, (bytes, bytearray)):
        body = _utf8(body, limits)
    if isinstance(body, str):
        return _sniff(body)
    if isinstance(body, dict):
        return body
    if isinstance(body, list) and len(body) == 1 and isinstance(body[0], (dict, str)):
        return body[0] if isinstance(body[0], dict) else _sniff(body[0])
    raise RequestError(f"expected review text or a JSON object with 'text', got {type(body).__name__}")


def _utf8(body: bytes | bytearray, limits: Limits) -> str:
    if len(body) > 4 * limits.max_chars:  # 4 bytes per character at most
        raise RequestError(f"request body is larger than {limits.max_chars} characters", 413)
    try:
        return bytes(body).decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(f"request body is not valid UTF-8 (byte {e.start})") from None


def _sniff(text: str) -> dict | str:
    """Text that starts with ``{`` is JSON and must parse as an object; other text is the review."""
    if not text.lstrip().startswith("{"):
        return text
    parsed = _parse(text, "looks like JSON but")
    if not isinstance(parsed, dict):
        raise RequestError("request body looks like JSON but is not an object")
    return parsed


def _json_object(value: Any, limits: Limits) -> dict:
    """A JSON-typed body (``JSONTyped.value``) -> its object; anything else is a 400."""
    if isinstance(value, (bytes, bytearray)):  # the worker could not parse it: say why
        value = _parse(_utf8(value, limits), "is typed application/json but")
    if not isinstance(value, dict):
        kind = JSON_KINDS.get(type(value), type(value).__name__)
        raise RequestError(f"request body is typed application/json but is a JSON {kind}, not an object with 'text'")
    return value


def _parse(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RequestError(f"request body {what} does not parse: {e.msg} at char {e.pos}") from None
    except RecursionError:  # hostile nesting, e.g. {"a": {"a": ... 100,000 levels
        raise RequestError("request body nests JSON too deeply") from None
    except ValueError as e:  # e.g. an integer beyond Python's int-digit limit
        raise RequestError(f"request body has a JSON value Python cannot read: {str(e)[:80]}") from None


def _form(fields: dict, limits: Limits) -> dict | str:
    """Form fields (TorchServe's dict for a form body): a ``text`` field is the review, the others
    its options; without ``text``, the body as sent, rebuilt from the fields, read as any body."""
    if not fields:
        raise RequestError(
            "empty form body: TorchServe passes on only name=value fields of a form (curl -d without a "
            "Content-Type); send text=<review>, or the review as text/plain, or JSON as application/json"
        )
    values = _form_text(fields, limits)
    if "text" in values:
        return {k: v if k == "text" else _form_value(v) for k, v in values.items()}
    return _sniff(_form_body(values))


def _form_text(fields: dict, limits: Limits) -> dict[str, str]:
    """The fields as text: every byte value decoded first (so its size or UTF-8 error comes first),
    then any value that is still not text refused."""
    values = {str(k): _utf8(v, limits) if isinstance(v, (bytes, bytearray)) else v for k, v in fields.items()}
    if not all(isinstance(v, str) for v in values.values()):
        raise RequestError("form fields must be text")
    return values


def _form_body(values: dict[str, str]) -> str:
    """The body as sent, rebuilt from its fields: ``k=v`` joined by ``&``, a field with an empty value
    as its bare name (so a JSON body that arrived as one field's name reads as JSON again)."""
    return "&".join(f"{k}={v}" if v else k for k, v in values.items())


def _form_value(value: str) -> Any:
    """A form option's value: a JSON number or boolean when it reads as one, else the string."""
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    return parsed if isinstance(parsed, (int, float, bool)) else value


# --- requests -----------------------------------------------------------------------------------


def parse_request(body: dict | str, limits: Limits) -> Request:
    """Tell a KServe v1 ({"instances": [...]}) or v2 ({"inputs": [...]}) body from a plain one.

    The handler, not TorchServe's service envelope, reads KServe bodies: the envelopes read only
    request 0 of a frontend batch, this works per row. A malformed KServe body raises
    RequestError: there is no instance to answer in its place.
    """
    if isinstance(body, dict) and "instances" in body:
        return Request(_instances(body["instances"], "'instances'", limits), "v1")
    if isinstance(body, dict) and "inputs" in body:
        return _v2_request(body, limits)
    return Request([body])


def _instances(items: Any, what: str, limits: Limits) -> list:
    if not isinstance(items, list) or not items:
        raise RequestError(f"{what} must be a non-empty list")
    if len(items) > limits.max_instances:
        raise RequestError(f"at most {limits.max_instances} reviews in one KServe request, got {len(items)}")
    return items


def _v2_request(body: dict, limits: Limits) -> Request:
    """v2 (Open Inference Protocol): each element of a BYTES input's data is one review."""
    inputs = _instances(body["inputs"], "'inputs'", limits)
    request = Request([], "v2", id=_v2_id(body.get("id")))
    for k, item in enumerate(inputs):
        request.instances += _v2_input(k, item, limits)
    _instances(request.instances, "'inputs'", limits)  # the limit holds for the request, not per input
    requested_outputs(body.get("outputs"))
    return request


def _v2_id(value: Any) -> str | None:
    """The body's id when it is a non-blank string; else None (the answer then takes the server's)."""
    return value if isinstance(value, str) and value.strip() else None


def _v2_input(k: int, item: Any, limits: Limits) -> list:
    """One v2 input's reviews, its ``data``. Checked in the order its fields are read: name,
    datatype, shape, data, then whether shape and data agree; the first fault is the 400."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise RequestError(f"input {k} must be an object with a 'name'")
    name = quoted(item["name"])
    if item.get("datatype") != "BYTES":
        raise RequestError(f"input {name} must have datatype BYTES (the review text)")
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise RequestError(f"input {name} needs a 'shape' list of sizes")
    data = _instances(item.get("data"), f"'data' of input {name}", limits)
    if math.prod(shape) != len(data):
        raise RequestError(f"input {name} has shape {shape} but {len(data)} data elements")
    return data


def requested_outputs(outputs: Any) -> None:
    """A v2 request may name the outputs it wants; this model has one, ``answer``."""
    if outputs is None:
        return
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise RequestError("'outputs' must be a list of objects with a 'name'")
    unknown = [o["name"] for o in outputs if o["name"] != OUTPUT]
    if unknown:
        raise RequestError(f"unknown output {quoted(unknown[0])}; this model's output is '{OUTPUT}'")


def envelope_instance(item: Any) -> Any:
    """An instance as TorchServe's own KServe envelopes hand it over (rows are instances there):
    a v1 instance, or a v2 input whose ``data`` is the review."""
    if isinstance(item, dict) and "name" in item and "datatype" in item:
        if item["datatype"] != "BYTES":
            raise RequestError("KServe v2 input must have datatype BYTES (the review text)")
        data = item.get("data")
        return data[0] if isinstance(data, list) and len(data) == 1 else data
    return item


# --- one review ---------------------------------------------------------------------------------


def review(instance: Any, limits: Limits) -> Review:
    """One instance (review text or a JSON object with "text" and options) -> a validated Review."""
    if isinstance(instance, (bytes, bytearray)):
        instance = _utf8(instance, limits)
    if isinstance(instance, str):
        return Review(_check_text(instance, limits), limits.explain)
    if not isinstance(instance, dict):
        raise RequestError(f"expected review text or a JSON object with 'text', got {type(instance).__name__}")
    text = instance.get("text", instance.get("data"))  # KServe v1 instances may use "data"
    if text is None:
        raise RequestError("JSON body needs a 'text' field with the review")
    if not isinstance(text, str):
        raise RequestError(f"'text' must be a string, got {type(text).__name__}")
    options = {k: v for k, v in instance.items() if k not in ("text", "data")}
    return Review(_check_text(text, limits), explain_settings(options, limits.explain))


def explain_settings(options: dict, defaults: IGSettings) -> IGSettings:
    """The one place request options are checked: known names, JSON types, then the engine's own
    rules (``IGSettings``) and the bound on ``rtol``."""
    _refuse_unknown(options)
    for key, value in options.items():
        options[key] = _option(key, value)
    if "rtol" in options and not (math.isfinite(options["rtol"]) and 0 < options["rtol"] < 1):
        raise RequestError("'rtol' must be a number in (0, 1)")
    try:
        return replace(defaults, **options)
    except ValueError as err:  # IGSettings: method, n_steps range, ties, exact needs the fast engine
        raise RequestError(f"bad explanation option: {err}") from None


def _refuse_unknown(options: dict) -> None:
    """Every unknown name is an error, before any value is looked at; the message names the first
    three in sorted order, so it does not depend on the order the client sent them in."""
    unknown = sorted(set(options) - set(OPTION_TYPES))
    if unknown:
        names = ", ".join(quoted(k) for k in unknown[:3]) + (" ..." if len(unknown) > 3 else "")
        raise RequestError(f"unknown field(s): {names}; allowed: text, {', '.join(OPTION_TYPES)}")


def _option(key: str, value: Any) -> Any:
    """One known option's value, of its JSON type: a JSON integer is a number where a float is
    wanted (``"rtol": 1`` is 1.0), but a boolean is never a number (``"n_steps": true`` is refused)."""
    kind = OPTION_TYPES[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RequestError(f"'{key}' must be {kind.__name__}, got {type(value).__name__}")
    return value


def _check_text(text: str, limits: Limits) -> str:
    if len(text) > limits.max_chars:
        raise RequestError(f"review is longer than {limits.max_chars} characters", 413)
    if not text.strip():
        raise RequestError("review text is empty")
    if not _visible(text):
        raise RequestError("review text is empty: it has only invisible characters (controls, format characters)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate, e.g. an escaped "\ud800" in JSON
        raise RequestError(f"review text is not valid Unicode (character {e.start})") from None
    return text


def _visible(text: str) -> bool:
    """Whether any character is not INVISIBLE (stops at the first: a real review's first letter)."""
    return any(unicodedata.category(c) not in INVISIBLE for c in text)


# --- answers ------------------------------------------------------------------------------------


def error_body(err: RequestError, request_id: str | None = None) -> dict:
    """TorchServe's error shape plus the request id: ``{"code", "type", "message", "request_id"}``."""
    kind = "BadRequest" if err.code == 400 else "RequestError"
    return {"code": err.code, "type": kind, "message": str(err), "request_id": request_id}


def prediction(
    logit: float, p_pos: float, labels: tuple[str, str], n_tokens: int, truncated: bool, n_unknown: int
) -> dict:
    """The answer of /predictions; the explanation adds to it. ``p_pos`` is the calibrated
    probability (``handler.calibration``); ``logit`` stays raw and decides the label, since a tiny
    logit's probability can round to exactly 0.5."""
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
        "ties": attr.ties,  # the rule the engine applied ("model" for a model it cannot see into)
    }


def kserve_response(
    request: Request, answers: list[dict], explain: bool, request_id: str | None, model_name: str, version: str | None
) -> dict:
    """The KServe answer of one request; ``answers`` holds one dict (or error body) per instance.

    v2: one BYTES output ``answer`` with one element per review, each the answer's compact JSON (a
    tensor element is a string; a JSON object there would be read back as the client's repr).
    """
    if request.protocol == "v1":
        return {"explanations" if explain else "predictions": answers}
    data = [compact_json(a) for a in answers]
    output = {"name": OUTPUT, "shape": [len(data)], "datatype": "BYTES", "data": data}
    return {"id": request.id or request_id, "model_name": model_name, "model_version": version, "outputs": [output]}
