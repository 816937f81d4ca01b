"""TorchServe handler: TorchServe's own four stages over one frontend batch.

``BaseHandler.handle`` runs the stages and keeps TorchServe's own timing (``HandlerTime``):
``preprocess`` reads every request of the batch on its own (its ``explain`` header, its body,
its validation: a bad request gets its own 4xx and never touches the others), ``inference``
answers all reviews together (one forward for the predictions, one Layer-IG call per distinct
set of explanation settings), and ``postprocess`` puts one answer back per request.

``BaseHandler`` picks ``explain_handle`` from request 0's header alone; here every request keeps
its own header, so ``explain_handle`` is the same two stages.

KServe v1 and v2 bodies are read here too, per request (``payload.parse_request``), so KServe
works with batching and without TorchServe's service envelope.

**Errors.** A bad request (or a bad review of a KServe request) is answered with TorchServe's
error shape ``{"code": <status>, "type": "BadRequest" | "RequestError", "message": "...",
"request_id": "..."}``, also over gRPC (where the status is OK and this object is the payload,
so clients check ``"code"``). Its HTTP status is 400 or 413 with a fixed ASCII reason phrase; the
details, with user-supplied names escaped and truncated, are only in the body. A KServe request
gets 200 with the error objects inline unless all its reviews fail. Every failure to decode or
tokenize one request is that request's 4xx, never the batch's 503.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from ts.torch_handler.base_handler import BaseHandler

from handler import checksums, device, payload
from handler.attribution import IGSettings, fast_engine_applies, layer_ig, prepare_quadrature
from handler.batch import Batch
from handler.calibration import Calibration
from handler.model import load_model
from handler.payload import Request, RequestError
from handler.serving_metrics import ServingMetrics
from handler.settings import HandlerSettings
from handler.taps import TapEngine
from handler.text import EncodedBatch, TextSettings, Vocab, encode, tokenize

logger = logging.getLogger(__name__)


class SentimentHandler(BaseHandler):
    def initialize(self, context) -> None:
        self.manifest = context.manifest
        self.model_dir = Path(context.system_properties.get("model_dir") or ".")
        checksums.verify(self.model_dir)  # before any weight is read
        self.settings = HandlerSettings.from_section((context.model_yaml_config or {}).get("handler"))
        self.text = TextSettings.load(self.model_dir)
        self.device = device.select(context.system_properties.get("gpu_id"), self.settings)
        self.model = load_model(self.model_dir, self.device)
        self.vocab = Vocab.load(self.model_dir)
        widest = max(self.model.config.filter_sizes)
        if self.text.min_len < widest:
            raise ValueError(f"text min_len {self.text.min_len} is below the widest filter ({widest})")
        self.calibration = Calibration.load(self.model_dir)
        self.ig = self.settings.explain.ig(on_gpu=self.device.type == "cuda")
        self.limits = payload.Limits(self.ig, self.settings.max_chars, self.settings.max_instances)
        self.version = ((self.manifest or {}).get("model") or {}).get("modelVersion")
        self.serving_metrics = ServingMetrics(context.metrics, context.model_name, self.version)
        prepare_quadrature(self.ig)  # the rules adaptive steps may reach, computed now, not in a request
        # Predictions and the fast engine run on the model's tap tables, built once here, owned here.
        self.taps = TapEngine(self.model) if fast_engine_applies(self.model) else None
        self.forward = self.taps.logits if self.taps else self.model
        self.initialized = True
        logger.info(
            "imdb_sentiment %s on %s, vocab %d, explain %s", self.version, self.device, len(self.vocab), self.ig
        )

    # --- preprocess -----------------------------------------------------------------------------

    def preprocess(self, data: list) -> Batch:
        """Each row -> its request (or its error); each review -> decoded, tokenized, encoded."""
        per_request = self._per_request(len(data))
        self.serving_metrics.batch(self.context.request_ids)
        batch = Batch(
            time.perf_counter(),
            per_request,
            [self._read(row, per_request) for row in data],
            [self._header(i if per_request else 0, "explain") for i in range(len(data))],
        )
        for row, request in enumerate(batch.requests):
            for instance in request.instances if isinstance(request, Request) else ():
                batch.row_of.append(row)
                batch.answers.append(self._review(instance, batch))
        self._encode(batch)
        return batch

    def _per_request(self, n_rows: int) -> bool:
        """TorchServe rows map 1:1 to requests, except under TorchServe's own KServe envelopes: they
        hand over the instances of request 0, which are then answered as rows of request 0."""
        ids = self.context.request_ids
        return ids is not None and len(ids) == n_rows

    def _read(self, row, per_request: bool) -> Request | RequestError:
        try:
            if not per_request:
                return Request([payload.envelope_instance(row)])
            return payload.parse_request(payload.read_body(row, self.limits), self.limits)
        except RequestError as err:
            return err

    def _review(self, instance, batch: Batch) -> RequestError | None:
        try:
            batch.reviews[len(batch.answers)] = payload.review(instance, self.limits)
        except RequestError as err:
            return err
        return None

    def _encode(self, batch: Batch) -> None:
        """Tokenize the decoded reviews; one that cannot be tokenized, or has no tokens, is its own 400."""
        numbers = sorted(batch.reviews)
        token_lists = self._tokenize([batch.reviews[k].text for k in numbers])
        kept = []
        for k, tokens in zip(numbers, token_lists):
            if isinstance(tokens, RequestError) or not tokens:
                batch.answers[k] = tokens or RequestError("review has no tokens after tokenizing")
                del batch.reviews[k]
            else:
                batch.order.append(k)
                kept.append(tokens)
        if kept:
            batch.encoded = encode(kept, self.vocab, self.text.min_len, self.text.max_tokens).to(self.device)

    def _tokenize(self, texts: list[str]) -> list[list[str] | RequestError]:
        """All texts in one spaCy pass; if that raises, one by one, so the review at fault gets the 400."""
        try:
            return tokenize(texts, lowercase=self.text.lowercase)
        except Exception:  # noqa: BLE001 - any tokenizer failure is one review's, found below
            results: list[list[str] | RequestError] = []
            for text in texts:
                try:
                    results += tokenize([text], lowercase=self.text.lowercase)
                except Exception as err:  # noqa: BLE001
                    results.append(RequestError(f"review could not be tokenized ({type(err).__name__})"))
            return results

    # --- inference ------------------------------------------------------------------------------

    def inference(self, batch: Batch, *args, **kwargs) -> Batch:
        """One forward for the reviews to predict, one Layer-IG call per distinct explanation settings."""
        if batch.encoded is None:
            return batch
        explain = [batch.explain[batch.row_of[k]] for k in batch.order]
        self._predict([j for j, e in enumerate(explain) if not e], batch)
        groups: dict[IGSettings, list[int]] = {}
        for j, e in enumerate(explain):
            if e:
                groups.setdefault(batch.reviews[batch.order[j]].settings, []).append(j)
        for settings, rows in groups.items():
            self._explain(settings, rows, batch)
        return batch

    def _predict(self, rows: list[int], batch: Batch) -> None:
        if not rows:
            return
        enc = batch.encoded
        with torch.inference_mode():
            sel = torch.tensor(rows, device=self.device)
            width = int(enc.lengths[sel].max())
            logits = self.forward(enc.ids[sel, :width], enc.lengths[sel]).tolist()  # [R]
        for j, logit in zip(rows, logits):
            batch.answers[batch.order[j]] = self._base(enc, j, logit)

    def _explain(self, settings: IGSettings, rows: list[int], batch: Batch) -> None:
        enc = batch.encoded
        sel = torch.tensor(rows, device=self.device)
        width = int(enc.lengths[sel].max())
        t0 = time.perf_counter()
        attr = layer_ig(self.model, enc.ids[sel, :width], enc.lengths[sel], settings, taps=self.taps)
        self.serving_metrics.observe("imdb_explanation_seconds", (time.perf_counter() - t0) / len(rows))
        for i, j in enumerate(rows):
            base = self._base(enc, j, float(attr.logits[i]))
            batch.answers[batch.order[j]] = payload.explanation(base, enc.tokens[j], attr, i)

    def _base(self, enc: EncodedBatch, j: int, logit: float) -> dict:
        score = self.calibration.score(logit)
        answer = payload.prediction(
            logit, score, self.settings.labels, len(enc.tokens[j]), enc.truncated[j], enc.n_unknown[j]
        )
        answer["model_version"] = self.version
        return answer

    def explain_handle(self, data_preprocess: Batch, raw_data: list) -> list:
        """BaseHandler's explain path (taken when request 0 asks to explain): the same two stages,
        because each request of the batch keeps its own explain header."""
        return self.postprocess(self.inference(data_preprocess))

    # --- postprocess ----------------------------------------------------------------------------

    def postprocess(self, batch: Batch) -> list:
        """One reply per row: a plain request's answer or error (and its status); a KServe request
        its envelope, 200 if any review succeeded, else the status of its first error."""
        replies, first = [], 0
        for row, request in enumerate(batch.requests):
            if isinstance(request, RequestError):
                replies.append(self._error(row, request, batch.per_request))
                continue
            answers = batch.answers[first : first + len(request.instances)]
            first += len(request.instances)
            replies.append(self._reply(row, request, answers, batch))
        self._record(batch)
        if batch.encoded is not None:
            device.after_batch(self.device, batch.encoded.ids.numel(), self.settings)
        return [self._json(row, reply) for row, reply in enumerate(replies)] if batch.per_request else replies

    def _json(self, row: int, reply: dict) -> str:
        """Compact JSON: TorchServe would encode a dict with ``json.dumps(indent=2)``, a quarter of
        the worker's time per explained review and a third more bytes. TorchServe's own KServe
        envelopes (not ``per_request``) wrap the answers themselves, so they keep dicts."""
        self.context.set_response_content_type(row, "application/json")
        return json.dumps(reply, separators=(",", ":"))

    def _reply(self, row: int, request: Request, answers: list, batch: Batch) -> dict:
        failed = [a for a in answers if isinstance(a, RequestError)]
        if request.protocol is None:
            return self._error(row, failed[0], batch.per_request) if failed else answers[0]
        if len(failed) == len(answers):
            self._status(row, failed[0], batch.per_request)
        bodies = [payload.error_body(a, self._request_id(row)) if isinstance(a, RequestError) else a for a in answers]
        name = self.context.model_name
        explain = batch.explain[row]
        return payload.kserve_response(request, bodies, explain, self._request_id(row), name, self.version)

    def _error(self, row: int, err: RequestError, per_request: bool) -> dict:
        self._status(row, err, per_request)
        return payload.error_body(err, self._request_id(row))

    def _status(self, row: int, err: RequestError, per_request: bool) -> None:
        """The HTTP status with a fixed ASCII phrase: the frontend writes the phrase's length in
        characters, so user text there would break the worker protocol (issue 11, defect 1)."""
        logger.info("request %s: %d %s", self._request_id(row), err.code, err)
        if per_request:
            self.context.set_response_status(err.code, err.phrase, row)

    def _request_id(self, row: int) -> str | None:
        ids = self.context.request_ids or {}
        return ids.get(row, ids.get(0))

    def _header(self, idx: int, key: str) -> bool:
        try:
            return self.context.get_request_header(idx, key) == "True"
        except (IndexError, KeyError, TypeError, AttributeError):
            return False

    def _record(self, batch: Batch) -> None:
        """Counters (rates come from the metrics backend) and the batch's handler time."""
        m = self.serving_metrics
        enc = batch.encoded
        errors = [a for a in batch.requests + batch.answers if isinstance(a, RequestError)]
        m.count("imdb_request_errors_total", len(errors))
        if enc is not None:
            m.count("imdb_reviews_total", len(batch.order))
            m.count("imdb_explanations_total", sum(batch.explain[batch.row_of[k]] for k in batch.order))
            m.count("imdb_review_tokens_total", sum(len(t) for t in enc.tokens))
            m.count("imdb_unknown_tokens_total", sum(enc.n_unknown))
            m.count("imdb_truncated_reviews_total", sum(enc.truncated))
        m.observe("imdb_batch_seconds", time.perf_counter() - batch.started)

    # --- describe -------------------------------------------------------------------------------

    def describe_handle(self) -> dict:
        metrics_file = self.model_dir / "metrics.json"  # the shipped model's own record
        shipped = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        # Read when asked (describe is rare): the calibration's fit figures, beside its temperature.
        record = json.loads(Path(self.model_dir, "model_config.json").read_text())
        return {
            "model": "imdb_sentiment",
            "model_version": self.version,
            "architecture": "CNN (Captum IMDB tutorial)",
            "config": self.model.config.__dict__,
            "labels": list(self.settings.labels),
            "vocab_size": len(self.vocab),
            "tokenizer": "spacy.blank('en').tokenizer, <br /> removed",
            "text": self.text.as_dict(),
            "calibration": record.get("calibration") or {"temperature": self.calibration.temperature},
            "attribution": {
                "method": "LayerIntegratedGradients on the embedding layer",
                "reference": "all <pad> tokens (TokenReferenceBase)",
                "target": "logit",
                "defaults": self.ig.__dict__,
                "ties": self.ig.ties,
                "fast_engine_applies": fast_engine_applies(self.model),
            },
            "device": str(self.device),
            "shipped_model": {k: shipped.get(k) for k in ("test_accuracy", "val_accuracy", "n_test", "data_sha256")},
        }
