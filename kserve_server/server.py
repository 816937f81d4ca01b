"""Load imdb_sentiment and serve it on KServe's Python model server (``python -m kserve_server``).

The model is a ``.mar`` (unpacked into a temporary folder: the same archive TorchServe loads,
its ``model-config.yaml`` and manifest version included) or an artifacts folder. HTTP only
(KServe's gRPC server is off: one protocol to secure), on loopback unless the host says
otherwise; in a cluster the container listens on 0.0.0.0 behind the same NetworkPolicy as the
TorchServe pod (docs/deploy.md). SIGTERM: uvicorn stops accepting, finishes what it holds within
``grace`` seconds, then exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import zipfile
from pathlib import Path

from kserve import ModelServer
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.model_server import app
from kserve.protocol.rest.server import RESTServer

from kserve_server import routes
from kserve_server.model import SentimentModel

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "model_store" / "imdb_sentiment.mar"


def unpack(mar: Path, into: Path) -> tuple[Path, Path, str | None]:
    """(model dir, model-config.yaml, version) of a .mar, unpacked into ``into``."""
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(into)
    manifest = json.loads((into / "MAR-INF" / "MANIFEST.json").read_text())
    return into, into / "model-config.yaml", manifest.get("model", {}).get("modelVersion")


def build(model: Path, config: Path | None, version: str | None, workdir: Path) -> SentimentModel:
    """The loaded model from a .mar or an artifacts folder (its config and version unless given)."""
    if model.suffix == ".mar":
        model, packed_config, packed_version = unpack(model, workdir)
        config, version = config or packed_config, version or packed_version
    loaded = SentimentModel(model, config or REPO / "model-config.yaml", version)
    loaded.load()
    return loaded


def serve(model: SentimentModel, host: str, port: int, grace: int) -> None:
    """KServe's ModelServer data plane and REST server, with this model's routes first."""
    server = ModelServer(http_port=port, enable_grpc=False, workers=1, grace_period=grace)
    server.register_model(model)
    routes.register(app, model)
    rest = RESTServer(
        FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension, port, grace_period=grace
    )
    rest.config.host = host  # KServe binds 0.0.0.0; loopback unless asked
    # KServe's timing middleware logs two lines per request at INFO (kserve.trace); the access log
    # stays, and timings are on /metrics (imdb_batch_seconds, imdb_explanation_seconds).
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    asyncio.run(rest.start())
