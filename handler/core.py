"""The server-neutral core: a list of requests in, one reply per request out.

Servers differ in how a request arrives (TorchServe's rows, headers and context; KServe's
FastAPI routes) and how a reply leaves (a worker frame, an HTTP response), not in the work.
The work is here, once: read each request on its own (its body, its validation: a bad request
gets its own 4xx and never touches the others), answer all reviews of the batch together (one
forward for the predictions, one Layer-IG call per distinct set of explanation settings), and
put one reply back per request. The adapters (``handler.sentiment_handler`` for TorchServe,
``kserve_server.model`` for KServe's Python server) only translate.

The three stages keep TorchServe's shape (``read`` = preprocess, ``infer`` = inference,
``reply`` = postprocess), so TorchServe still times them as its own; ``answer`` runs all three.

**Errors.** A bad request (or a bad review of a KServe request) is answered with TorchServe's
error shape ``{"code": <status>, "type": "BadRequest" | "RequestError", "message": "...",
"request_id": "..."}`` and status 400 or 413 with a fixed ASCII reason phrase; the details, with
user-supplied names escaped and truncated, are only in the body. A KServe request gets 200 with
the error objects inline unless all its reviews fail. Every failure to decode or tokenize one
request is that request's 4xx, never the batch's failure.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from handler import checksums, device, payload
from handler.attribution import IGSettings, fast_engine_applies, layer_ig, prepare_quadrature
from handler.calibration import Calibration
from handler.model import load_model
from handler.payload import Request, RequestError, Review
from handler.settings import HandlerSettings
from handler.taps import TapEngine
from handler.text import EncodedBatch, TextSettings, Vocab, encode, tokenize, warm_tokenizer

logger = logging.getLogger(__name__)
MODEL = "imdb_sentiment"
Answer = dict | RequestError | None


class Metrics(Protocol):
    """Where the core's counters and histograms go (names in ``handler.metric_names``)."""

    def count(self, name: str, value: int) -> None: ...

    def observe(self, name: str, seconds: float) -> None: ...


class NoMetrics:
    def count(self, name: str, value: int) -> None:
        pass

    def observe(self, name: str, seconds: float) -> None:
        pass


@dataclass
class Inbound:
    """One request as a server hands it over.

    ``body``: bytes, text or a parsed JSON object (``payload.read_body``'s rule); ``form``: the
    fields of a form body instead, as the server decoded them. ``instance``: the body is one
    instance already taken out of a KServe envelope by the server (TorchServe's own envelopes),
    answered as a plain request without a status of its own.
    """

    body: Any
    explain: bool = False
    id: str | None = None
    instance: bool = False
    form: dict | None = None


@dataclass
class Reply:
    """One request's answer: an HTTP status (with its fixed ASCII phrase) and a JSON object."""

    body: dict
    status: int = 200
    phrase: str = "OK"
    error: str | None = None  # the message of the error that set ``status``


@dataclass
class Batch:
    """One batch on its way through the stages; reviews are numbered across its requests."""

    started: float
    inbound: list[Inbound]
    requests: list[Request | RequestError]  # per request
    row_of: list[int] = field(default_factory=list)  # per review: its request
    answers: list[Answer] = field(default_factory=list)  # per review: answer or error
    reviews: dict[int, Review] = field(default_factory=dict)  # the reviews that reached the model
    encoded: EncodedBatch | None = None  # [R, T] ids of ``order``'s reviews
    order: list[int] = field(default_factory=list)  # encoded row -> review number


class SentimentCore:
    """The loaded model with its vocabulary, calibration, settings and engine."""

    def __init__(
        self,
        model_dir: Path,
        section: dict | None,
        version: str | None,
        gpu_id: int | str | None = None,
        metrics: Metrics | None = None,
        name: str = MODEL,
    ):
        """``section``: model-config.yaml's ``handler:``; ``name``: the name the server serves it under."""
        checksums.verify(model_dir)  # before any weight is read
        self.model_dir, self.version, self.name = model_dir, version, name
        self.metrics = metrics or NoMetrics()
        self.settings = HandlerSettings.from_section(section)
        self.text = TextSettings.load(model_dir)
        self.device = device.select(gpu_id, self.settings)
        self.model = load_model(model_dir, self.device)
        self.vocab = Vocab.load(model_dir)
        self.vocab.orth_table()  # spaCy id -> vocabulary id, and spaCy's cache of the words, now, not in a request
        warm_tokenizer(self.vocab.itos[2:])
        widest = max(self.model.config.filter_sizes)
        if self.text.min_len < widest:
            raise ValueError(f"text min_len {self.text.min_len} is below the widest filter ({widest})")
        self.calibration = Calibration.load(model_dir)
        self.ig = self.settings.explain.ig(on_gpu=self.device.type == "cuda")
        self.limits = payload.Limits(self.ig, self.settings.max_chars, self.settings.max_instances)
        prepare_quadrature(self.ig)  # the rules adaptive steps may reach, computed now, not in a request
        # Predictions and the fast engine run on the model's tap tables, built once here, owned here.
        self.taps = TapEngine(self.model) if fast_engine_applies(self.model) else None
        self.forward = self.taps.logits if self.taps else self.model
        logger.info("%s %s on %s, vocab %d, explain %s", name, version, self.device, len(self.vocab), self.ig)

    def answer(self, inbound: list[Inbound]) -> list[Reply]:
        return self.reply(self.infer(self.read(inbound)))

    # --- read -----------------------------------------------------------------------------------

    def read(self, inbound: list[Inbound]) -> Batch:
        """Each request -> its instances (or its error); each review -> decoded, tokenized, encoded."""
        batch = Batch(time.perf_counter(), inbound, [self._request(r) for r in inbound])
        for row, request in enumerate(batch.requests):
            for instance in request.instances if isinstance(request, Request) else ():
                batch.row_of.append(row)
                batch.answers.append(self._review(instance, batch))
        self._encode(batch)
        return batch

    def _request(self, inbound: Inbound) -> Request | RequestError:
        try:
            if inbound.instance:
                return Request([payload.envelope_instance(inbound.body)])
            return payload.parse_request(payload.read_body(inbound.body, self.limits, inbound.form), self.limits)
        except RequestError as err:
            return err

    def _review(self, instance: Any, batch: Batch) -> RequestError | None:
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

    # --- infer ----------------------------------------------------------------------------------

    def infer(self, batch: Batch) -> Batch:
        """One forward for the reviews to predict, one Layer-IG call per distinct explanation settings."""
        if batch.encoded is None:
            return batch
        explain = [batch.inbound[batch.row_of[k]].explain for k in batch.order]
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
        self.metrics.observe("imdb_explanation_seconds", (time.perf_counter() - t0) / len(rows))
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

    # --- reply ----------------------------------------------------------------------------------

    def reply(self, batch: Batch) -> list[Reply]:
        """One reply per request: a plain request's answer or error; a KServe request its envelope,
        200 if any review succeeded, else the status of its first error."""
        replies, first = [], 0
        for inbound, request in zip(batch.inbound, batch.requests):
            if isinstance(request, RequestError):
                replies.append(self._error(inbound, request))
                continue
            answers = batch.answers[first : first + len(request.instances)]
            first += len(request.instances)
            replies.append(self._reply(inbound, request, answers))
        self._record(batch)
        if batch.encoded is not None:
            device.after_batch(self.device, batch.encoded.ids.numel(), self.settings)
        return replies

    def _reply(self, inbound: Inbound, request: Request, answers: list[Answer]) -> Reply:
        failed = [a for a in answers if isinstance(a, RequestError)]
        if request.protocol is None:
            return self._error(inbound, failed[0]) if failed else Reply(answers[0])
        bodies = [payload.error_body(a, inbound.id) if isinstance(a, RequestError) else a for a in answers]
        body = payload.kserve_response(request, bodies, inbound.explain, inbound.id, self.name, self.version)
        if len(failed) == len(answers):
            return self._status(Reply(body), inbound, failed[0])
        return Reply(body)

    def _error(self, inbound: Inbound, err: RequestError) -> Reply:
        return self._status(Reply(payload.error_body(err, inbound.id)), inbound, err)

    def _status(self, reply: Reply, inbound: Inbound, err: RequestError) -> Reply:
        """The error's status with a fixed ASCII phrase: TorchServe's frontend writes the phrase's
        length in characters, so user text there would break the worker protocol (issue 11)."""
        logger.info("request %s: %d %s", inbound.id, err.code, err)
        if not inbound.instance:  # an envelope's instances share their request's status
            reply.status, reply.phrase, reply.error = err.code, err.phrase, str(err)
        return reply

    def _record(self, batch: Batch) -> None:
        """Counters (rates come from the metrics backend) and the batch's time in the core."""
        m = self.metrics
        enc = batch.encoded
        errors = [a for a in batch.requests + batch.answers if isinstance(a, RequestError)]
        m.count("imdb_request_errors_total", len(errors))
        if enc is not None:
            m.count("imdb_reviews_total", len(batch.order))
            m.count("imdb_explanations_total", sum(batch.inbound[batch.row_of[k]].explain for k in batch.order))
            m.count("imdb_review_tokens_total", sum(len(t) for t in enc.tokens))
            m.count("imdb_unknown_tokens_total", sum(enc.n_unknown))
            m.count("imdb_truncated_reviews_total", sum(enc.truncated))
        m.observe("imdb_batch_seconds", time.perf_counter() - batch.started)

    # --- describe -------------------------------------------------------------------------------

    def describe(self) -> dict:
        """What the model is: architecture, vocabulary, text rules, calibration and explanation defaults."""
        metrics_file = self.model_dir / "metrics.json"  # the shipped model's own record
        shipped = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        # Read when asked (describe is rare): the calibration's fit figures, beside its temperature.
        record = json.loads(Path(self.model_dir, "model_config.json").read_text())
        return {
            "model": MODEL,
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
