"""Routes KServe's own REST server lacks, registered before its own (the first match wins):

- TorchServe's ``POST /predictions/{model}[/{version}]`` and ``/explanations/...``, with the same
  bodies and answers, so a client moves between the servers by changing the port; the raw body is
  read whatever its content type (TorchServe's frontend drops a form body without ``name=value``
  fields, as ``curl -d 'great movie'`` sends; here it is the review), and ``GET /ping``;
- the Open Inference Protocol's versioned routes (KServe 0.21 answers them 501) and ``explain``
  (absent there), with the binary tensor extension read and written by KServe's own
  ``InferRequest.from_bytes`` / ``InferResponse.to_rest``;
- 503 with ``Retry-After`` when the batcher's queue is full.
"""

from __future__ import annotations

import re
import urllib.parse
import uuid

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, ORJSONResponse
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest
from kserve.protocol.rest.v2_datamodels import InferenceRequest
from pydantic import ValidationError

from handler import payload
from handler.core import Inbound
from handler.reply_json import compact_json
from kserve_server.batcher import QueueFull
from kserve_server.model import SentimentModel

BINARY_HEADER = "inference-header-content-length"  # the binary tensor extension's JSON length
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")  # a form's % not starting an escape


def register(app: FastAPI, model: SentimentModel) -> None:
    """Add the routes for ``model`` to KServe's app (before ``ModelServer`` adds its own)."""
    routes = Routes(model)
    for kind in ("predictions", "explanations"):
        app.add_api_route(f"/{kind}/{{model_name}}", routes.torchserve, methods=["POST"])
        app.add_api_route(f"/{kind}/{{model_name}}/{{version}}", routes.torchserve, methods=["POST"])
    for verb in ("infer", "explain"):
        app.add_api_route(f"/v2/models/{{model_name}}/{verb}", routes.v2, methods=["POST"])
        app.add_api_route(f"/v2/models/{{model_name}}/versions/{{version}}/{verb}", routes.v2, methods=["POST"])
    app.add_api_route("/v2/models/{model_name}", routes.v2_metadata, methods=["GET"])
    app.add_api_route("/v2/models/{model_name}/versions/{version}", routes.v2_metadata, methods=["GET"])
    app.add_api_route("/v2/models/{model_name}/versions/{version}/ready", routes.v2_ready, methods=["GET"])
    app.add_api_route("/ping", routes.ping, methods=["GET"])
    app.add_exception_handler(QueueFull, _queue_full)


class Routes:
    def __init__(self, model: SentimentModel):
        self.model = model

    async def torchserve(self, request: Request, model_name: str, version: str | None = None) -> Response:
        missing = _missing(self.model, model_name, version)
        if missing:
            return _torchserve_error(404, "ModelNotFoundException", missing)
        explain = request.url.path.startswith("/explanations/")
        try:
            inbound = _torchserve_inbound(await request.body(), request.headers.get("content-type", ""))
        except payload.RequestError as error:
            return _torchserve_error(error.code, "BadRequest", str(error))
        inbound.explain, inbound.id = explain, str(uuid.uuid4())
        try:
            reply = await self.model.answer(inbound)
        except QueueFull as full:
            return _torchserve_error(503, "ServiceUnavailableException", str(full), full.retry_after)
        return Response(compact_json(reply.body), reply.status, media_type="application/json")

    async def v2(self, request: Request, model_name: str, version: str | None = None) -> Response:
        missing = _missing(self.model, model_name, version)
        if missing:
            return ORJSONResponse({"error": missing}, 404)
        infer = _infer_request(await request.body(), request.headers, self.model.name)
        explain = request.url.path.endswith("/explain")
        response = await (self.model.explain(infer) if explain else self.model.predict(infer))
        body, json_length = response.to_rest()
        if json_length is None:
            return ORJSONResponse(body)
        return Response(body, media_type="application/octet-stream", headers={BINARY_HEADER: str(json_length)})

    async def v2_metadata(self, model_name: str, version: str | None = None) -> Response:
        """KServe's own metadata, with the version it leaves out (``versions`` null)."""
        missing = _missing(self.model, model_name, version)
        return ORJSONResponse({"error": missing}, 404) if missing else ORJSONResponse(model_metadata(self.model))

    async def v2_ready(self, model_name: str, version: str) -> Response:
        missing = _missing(self.model, model_name, version)
        if missing:
            return ORJSONResponse({"error": missing}, 404)
        ready = self.model.ready
        return ORJSONResponse({"name": self.model.name, "ready": ready}, 200 if ready else 503)

    async def ping(self) -> Response:
        """TorchServe's health route, for probes and clients written for it."""
        healthy = self.model.ready
        return ORJSONResponse({"status": "Healthy" if healthy else "Unhealthy"}, 200 if healthy else 500)


def _missing(model: SentimentModel, name: str, version: str | None) -> str | None:
    """Why ``name``/``version`` is not served here, or None when it is."""
    if name != model.name:
        return f"Model not found: {name}"
    if version is not None and version != model.version:
        return f"Model version not found: {name} {version} (serving {model.version})"
    return None


def _torchserve_inbound(raw: bytes, content_type: str) -> Inbound:
    """The request as TorchServe's frontend would hand it to the handler: a JSON-typed body parsed
    (and marked so: only an object is a request, a JSON string or an unparsable body is a 400), a
    form with a ``text`` field as its fields; everything else the raw bytes (so a form without
    ``name=value`` fields, ``curl -d 'great movie'``, is the review, where TorchServe drops it)."""
    kind = content_type.split(";")[0].strip().lower()
    if payload.is_json_type(kind):
        try:
            return Inbound(payload.JSONTyped(orjson.loads(raw)))
        except orjson.JSONDecodeError:  # the payload's own parser says why (or reads what orjson refuses)
            return Inbound(payload.JSONTyped(raw))
    if kind == "application/x-www-form-urlencoded":
        fields = urllib.parse.parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)
        if any(k == "text" for k, _ in fields):
            _check_escapes(raw)
            return Inbound(None, form=dict(fields))
    return Inbound(raw)


def _check_escapes(raw: bytes) -> None:
    """A form's ``%`` must start a two-hex-digit escape: ``parse_qsl`` would keep ``text=good%`` as
    the literal ``good%``, TorchServe's frontend answers it 500; a 400 says what is wrong. Only a
    body read as a form is checked (``curl -d '100% great'`` has no field and is the review)."""
    bad = _BAD_ESCAPE.search(raw)
    if bad:
        near = raw[max(0, bad.start() - 10) : bad.start() + 3].decode("utf-8", "replace")
        raise payload.RequestError(
            f"malformed percent-escape in a form body near {near!r}: a '%' must be followed by two hex "
            "digits (send %25 for a literal '%', or the review as text/plain)"
        )


def _infer_request(raw: bytes, headers, name: str) -> InferRequest:
    """A v2 body (JSON, or JSON + binary tensors) as KServe's ``InferRequest``; KServe's datamodel
    checks its shape, a malformed one is a 400 ``{"error": ...}``."""
    try:
        if headers.get(BINARY_HEADER):
            return InferRequest.from_bytes(raw, int(headers[BINARY_HEADER]), name)
        return InferRequest.from_inference_request(InferenceRequest.model_validate_json(raw), name)
    except ValidationError as err:
        raise InvalidInput(f"not an inference request: {err.errors()[0]['msg']}") from None
    except (ValueError, IndexError, TypeError) as err:
        raise InvalidInput(f"could not read the inference request: {str(err)[:200]}") from None


def model_metadata(model: SentimentModel) -> dict:
    return {
        "name": model.name,
        "versions": [model.version] if model.version else [],
        "platform": "pytorch",
        "inputs": model.get_input_types(),
        "outputs": model.get_output_types(),
    }


def _torchserve_error(code: int, kind: str, message: str, retry_after: int | None = None) -> Response:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return JSONResponse({"code": code, "type": kind, "message": message}, code, headers=headers)


async def _queue_full(request: Request, exc: QueueFull) -> Response:
    return ORJSONResponse({"error": str(exc)}, 503, headers={"Retry-After": str(exc.retry_after)})
