"""``SentimentModel``: the core as a ``kserve.Model``, answering KServe's v1 and v2 protocols.

``load`` builds the core from the artifacts and ``model-config.yaml`` (its ``handler:`` section,
and TorchServe's ``batchSize``/``maxBatchDelay`` for the micro-batcher, so both servers batch
alike). ``predict``/``explain`` take what KServe's data plane hands over (a v1 dict or a v2
``InferRequest``) and return a dict or an ``InferResponse``: a request whose reviews all fail is
KServe's ``InvalidInput`` (400, ``{"error": ...}``); a partial failure answers inline, as on
TorchServe. ``answer`` is the raw path, for TorchServe's own routes (``kserve_server.routes``).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import yaml
from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from handler import payload
from handler.core import MODEL, Inbound, Reply, SentimentCore
from handler.metric_names import STARTS
from kserve_server.batcher import MicroBatcher
from kserve_server.metrics import PrometheusMetrics

MAX_QUEUE = 256  # requests waiting for the model (TorchServe's job_queue_size in config.properties)


class SentimentModel(Model):
    def __init__(
        self, model_dir: Path, config: Path, version: str | None, name: str = MODEL, gpu_id: int | None = None
    ):
        super().__init__(name)
        self.model_dir, self.config, self.version, self.gpu_id = model_dir, config, version, gpu_id
        self.core: SentimentCore | None = None
        self.batcher: MicroBatcher[Inbound, Reply] | None = None

    def load(self) -> bool:
        config = yaml.safe_load(self.config.read_text()) if self.config.exists() else {}
        metrics = PrometheusMetrics(self.name, self.version)
        gpu_id = self.gpu_id if self.gpu_id is not None else default_gpu(config)
        self.core = SentimentCore(self.model_dir, config.get("handler"), self.version, gpu_id, metrics, self.name)
        metrics.count(STARTS, 1)  # imdb_worker_starts_total: 1 per process; increase() counts a restart
        batch, delay_ms = int(config.get("batchSize", 8)), float(config.get("maxBatchDelay", 2))
        self.batcher = MicroBatcher(self.core.answer, batch, delay_ms / 1000, MAX_QUEUE)
        self.ready = True
        return self.ready

    async def answer(self, inbound: Inbound) -> Reply:
        """One request through the batcher, with the batch's other requests."""
        return await self.batcher.submit(inbound)

    async def predict(self, payload_, headers=None, response_headers=None):
        return await self._kserve(payload_, explain=False)

    async def explain(self, payload_, headers=None):
        return await self._kserve(payload_, explain=True)

    async def _kserve(self, body, explain: bool):
        v2 = isinstance(body, InferRequest)
        request_id = (body.id if v2 else None) or str(uuid.uuid4())
        reply = await self.answer(Inbound(v2_dict(body) if v2 else body, explain, request_id))  # a parsed body
        if reply.status != 200:
            raise InvalidInput(reply.error or "bad request")
        if not v2:
            return reply.body
        (output,) = reply.body["outputs"]
        answer = InferOutput(output["name"], output["shape"], output["datatype"], output["data"])
        binary = bool((body.parameters or {}).get("binary_data_output"))
        return InferResponse(
            reply.body["id"],
            self.name,
            [answer],
            model_version=self.version,
            use_binary_outputs=binary,
            requested_outputs=body.request_outputs,
        )

    def get_input_types(self) -> list[dict]:
        return [{"name": payload.INPUT, "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        return [{"name": payload.OUTPUT, "datatype": "BYTES", "shape": [-1]}]


def default_gpu(config: dict) -> int | None:
    """GPU 0 where model-config.yaml asks for GPU workers (``deviceType: gpu``, as TorchServe reads
    it) and CUDA is present, else the CPU (None); one process per GPU, like one TorchServe worker."""
    import torch

    return 0 if config.get("deviceType", "gpu") == "gpu" and torch.cuda.is_available() else None


def v2_dict(request: InferRequest) -> dict:
    """An ``InferRequest`` (JSON or binary tensors, decoded by KServe) as the v2 body the core reads;
    BYTES elements arrive as text (KServe decodes them as UTF-8)."""
    inputs = [
        {"name": i.name, "shape": list(i.shape), "datatype": i.datatype, "data": _elements(i)} for i in request.inputs
    ]
    body: dict = {"inputs": inputs, "id": request.id}
    if request.request_outputs:
        body["outputs"] = [{"name": o.name} for o in request.request_outputs]
    return body


def _elements(tensor) -> list:
    return list(tensor.data) if tensor.data is not None else tensor.as_numpy().ravel().tolist()
