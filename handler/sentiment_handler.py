"""TorchServe handler: wires payloads, the text pipeline, the model and Layer IG together.

Unlike TorchServe's stock handlers, every request of a batch is judged on its own: its own
``explain`` header (the frontend sends "True"/"False"), its own validation (a bad request gets
its own 4xx via ``context.set_response_status``) and its own explanation. Mixed batches are
served in one pass: one forward for the predictions and one Layer-IG call per distinct set of
explanation options, which also yields the explained rows' logits.

KServe v1 and v2 bodies are read here too, per request (``payload.parse_request``), so KServe
works with batching and without TorchServe's service envelope: the reviews of all requests of a
batch are answered together and each request gets its own KServe answer and status.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import fields, replace
from functools import partial
from pathlib import Path

import torch
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

from handler import payload
from handler.attribution import IGSettings, fast_engine_applies, layer_ig, prepare_quadrature
from handler.model import load_model, predict_logits, token_taps
from handler.text import Vocab, encode, tokenize

logger = logging.getLogger(__name__)


class SentimentHandler(BaseHandler):
    def initialize(self, context) -> None:
        props = context.system_properties
        self.model_dir = Path(props.get("model_dir") or ".")
        cfg = dict((getattr(context, "model_yaml_config", None) or {}).get("handler") or {})
        gpu_id = props.get("gpu_id")
        if gpu_id is not None and torch.cuda.is_available():
            self.device = torch.device(f"cuda:{gpu_id}")
            # Explanations must match Captum in float32; TF32 convolutions moved them by ~3e-3.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        else:
            self.device = torch.device("cpu")
        if cfg.get("torch_threads"):
            # A worker shares the cores with TorchServe's frontend (and other workers): measured on
            # 2 cores, one intra-op thread gave 5x the explanation throughput of torch's default.
            torch.set_num_threads(int(cfg["torch_threads"]))
        self.model = load_model(self.model_dir, self.device)
        self.vocab = Vocab.load(self.model_dir)
        self.labels = tuple(cfg.get("labels", ("neg", "pos")))
        self.min_len = int(cfg.get("min_len", 7))
        self.max_tokens = int(cfg.get("max_tokens", 512))
        widest = max(self.model.config.filter_sizes)
        if self.min_len < widest:
            raise ValueError(f"min_len {self.min_len} is below the widest filter ({widest})")
        explain = dict(cfg.get("explain") or {})
        gpu_chunk = explain.pop("gpu_chunk_elements", None)
        if self.device.type == "cuda" and gpu_chunk:  # a GPU wants few, large chunks
            explain["chunk_elements"] = gpu_chunk
        known = {f.name for f in fields(IGSettings)}
        self.ig = IGSettings(**{k: v for k, v in explain.items() if k in known})
        self.limits = payload.Limits(
            max_chars=int(cfg.get("max_chars", 100_000)),
            max_n_steps=self.ig.max_steps,
            max_instances=int(cfg.get("max_instances", 64)),
        )
        self.manifest = context.manifest
        self.version = ((self.manifest or {}).get("model") or {}).get("modelVersion")
        metrics_file = self.model_dir / "metrics.json"  # the shipped model's own record, for describe
        shipped = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        self.shipped = {k: shipped.get(k) for k in ("test_accuracy", "val_accuracy", "n_test", "data_sha256")}
        prepare_quadrature(self.ig)  # the rules adaptive steps may reach, computed now, not in a request
        # Predictions and the fast engine run on the model's tap tables: built now too.
        self.forward = self.model
        if fast_engine_applies(self.model):
            token_taps(self.model)
            self.forward = partial(predict_logits, self.model)
        self.initialized = True
        logger.info(
            "imdb_sentiment on %s, vocab %d, explain %s (fast engine applies: %s)",
            self.device,
            len(self.vocab),
            self.ig,
            fast_engine_applies(self.model),
        )

    def handle(self, data: list, context) -> list:
        """Answer a frontend batch: all reviews of all its requests in one pass, one answer per request.

        A request is a plain review or a KServe v1/v2 body of several reviews (``payload.parse_request``);
        the reviews of all requests are flattened into one list, answered together, and put back.
        """
        self.context = context
        if self._is_describe():
            return [self.describe_handle()]
        started = time.perf_counter()
        n = len(data)
        # TorchServe rows map 1:1 to requests, except under TorchServe's own KServe envelopes: they
        # hand over the instances of request 0, which are then answered as plain rows of request 0.
        per_request = context.request_ids is not None and len(context.request_ids) == n
        requests: list[payload.Request | payload.RequestError] = []
        for i, row in enumerate(data):
            try:
                requests.append(payload.parse_request(row, self.limits) if per_request else payload.Request([row]))
            except payload.RequestError as err:
                requests.append(err)
        row_explain = [self._header(i if per_request else 0, "explain") for i in range(n)]
        items = [(i, item) for i, r in enumerate(requests) if isinstance(r, payload.Request) for item in r.instances]
        explain = [row_explain[i] for i, _ in items]
        out: list[dict | payload.RequestError | None] = [None] * len(items)
        reviews = {}
        for k, (_, item) in enumerate(items):
            try:
                reviews[k] = payload.decode(item, self.limits)
            except payload.RequestError as err:
                out[k] = err
        rows = sorted(reviews)
        token_lists = tokenize([reviews[k].text for k in rows])
        for k, tokens in zip(list(rows), token_lists):
            if not tokens:
                rows.remove(k)
                out[k] = payload.RequestError("review has no tokens after tokenizing")
        token_lists = [t for t in token_lists if t]
        if rows:
            batch = encode(token_lists, self.vocab, self.min_len, self.max_tokens).to(self.device)
            self._answer(rows, batch, reviews, explain, out)
            self._metrics(batch, explain, rows, started)
        errors = sum(isinstance(r, payload.RequestError) for r in requests + out)
        if errors:
            self._metric("RequestErrors", errors, "Count")
        return self._reply(requests, out, row_explain, per_request)

    def _reply(self, requests: list, out: list, row_explain: list[bool], per_request: bool) -> list:
        """One answer per row: plain rows get their answer or error (and its status); KServe rows
        their envelope, 200 if any review succeeded, else the status of the first error."""
        replies, pos = [], 0
        for i, request in enumerate(requests):
            if isinstance(request, payload.RequestError):
                replies.append(self._error(i, request, per_request))
                continue
            answers = out[pos : pos + len(request.instances)]
            pos += len(request.instances)
            if request.protocol is None:
                (answer,) = answers
                replies.append(
                    self._error(i, answer, per_request) if isinstance(answer, payload.RequestError) else answer
                )
                continue
            failed = [a for a in answers if isinstance(a, payload.RequestError)]
            if len(failed) == len(answers):
                self._error(i, failed[0], per_request)
            bodies = [payload.error_body(a) if isinstance(a, payload.RequestError) else a for a in answers]
            replies.append(
                payload.kserve_response(
                    request,
                    bodies,
                    row_explain[i],
                    self.context.get_request_id(i),
                    self.context.model_name,
                    self.version,
                )
            )
        return replies

    def _answer(self, rows, batch, reviews, explain, out) -> None:
        """Fill ``out`` for the reviews ``rows``: one forward for the predictions, one Layer-IG call
        per distinct explanation settings (which also yields the explained reviews' logits)."""
        predict_pos = [k for k, i in enumerate(rows) if not explain[i]]
        if predict_pos:
            with torch.inference_mode():
                sel = torch.tensor(predict_pos, device=self.device)
                width = int(batch.lengths[sel].max())
                logits = self.forward(batch.ids[sel, :width], batch.lengths[sel]).tolist()
            for k, logit in zip(predict_pos, logits):
                out[rows[k]] = self._base(batch, k, logit)
        groups: dict[IGSettings, list[int]] = {}
        for k, i in enumerate(rows):
            if explain[i]:
                try:
                    settings = replace(self.ig, **reviews[i].options)
                except ValueError as err:
                    out[i] = payload.RequestError(str(err))
                    continue
                groups.setdefault(settings, []).append(k)
        for settings, ks in groups.items():
            sel = torch.tensor(ks, device=self.device)
            width = int(batch.lengths[sel].max())
            t0 = time.perf_counter()
            attr = layer_ig(self.model, batch.ids[sel, :width], batch.lengths[sel], settings)
            self._metric("ExplanationTimeMsPerReview", (time.perf_counter() - t0) * 1000 / len(ks), "ms", gauge=True)
            for j, k in enumerate(ks):
                base = self._base(batch, k, float(attr.logits[j]))
                out[rows[k]] = payload.explanation(base, batch.tokens[k], attr, j)

    def _base(self, batch, k: int, logit: float) -> dict:
        return payload.prediction(logit, self.labels, len(batch.tokens[k]), batch.truncated[k], batch.n_unknown[k])

    def _header(self, idx: int, key: str) -> bool:
        try:
            return self.context.get_request_header(idx, key) == "True"
        except (IndexError, KeyError, TypeError, AttributeError):
            return False

    def _error(self, idx: int, err: payload.RequestError, per_request: bool) -> dict:
        if per_request:
            self.context.set_response_status(err.code, str(err), idx)
        return payload.error_body(err)

    def _metrics(self, batch, explain, rows, started) -> None:
        """Counters (rates come from the metrics backend) and gauges, declared in metrics.yaml."""
        self._metric("ReviewsServed", len(rows), "Count")
        self._metric("ReviewsExplained", sum(bool(explain[i]) for i in rows), "Count")
        self._metric("ReviewTokens", sum(len(t) for t in batch.tokens), "Count")
        self._metric("UnknownTokens", sum(batch.n_unknown), "Count")
        self._metric("TruncatedReviews", sum(batch.truncated), "Count")
        self._metric("HandlerBatchTimeMs", (time.perf_counter() - started) * 1000, "ms", gauge=True)

    def _metric(self, name: str, value: float, unit: str, gauge: bool = False) -> None:
        metrics = self.context.metrics
        if metrics is None:
            return
        dims = [Dimension("ModelName", self.context.model_name), Dimension("Level", "Model")]
        kind = MetricTypes.GAUGE if gauge else MetricTypes.COUNTER
        metrics.add_metric(name, round(float(value), 3), unit, None, dims, kind)

    def describe_handle(self) -> dict:
        return {
            "model": "imdb_sentiment",
            "architecture": "CNN (Captum IMDB tutorial)",
            "config": self.model.config.__dict__,
            "labels": list(self.labels),
            "vocab_size": len(self.vocab),
            "tokenizer": "spacy.blank('en').tokenizer on lower-cased text, <br /> removed",
            "min_len": self.min_len,
            "max_tokens": self.max_tokens,
            "attribution": {
                "method": "LayerIntegratedGradients on the embedding layer",
                "reference": "all <pad> tokens (TokenReferenceBase)",
                "target": "logit",
                "defaults": self.ig.__dict__,
                "fast_engine_applies": fast_engine_applies(self.model),
            },
            "device": str(self.device),
            "shipped_model": self.shipped,
        }
