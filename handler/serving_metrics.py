"""The handler's own metrics, through TorchServe's metrics API (``context.metrics``).

Prometheus names with the dimensions ``model_name`` and ``model_version`` (declared in
``metrics.yaml``; an undeclared one is added to the worker's cache so that it is still logged):
counters of reviews, explanations, tokens, unknown tokens, truncated reviews and request errors,
and histograms of the handler time of one frontend batch and the engine time per explained review.

``imdb_worker_starts_total`` counts the workers that loaded the model (1 per ``initialize``; the
frontend keeps the total across its workers' lives), so a worker that died and was restarted shows
as a step in Prometheus, ``increase(imdb_worker_starts_total[1h]) > 1`` with one worker, even after
the logs that said so have rolled over.
"""

from __future__ import annotations

from ts.metrics.metric_cache_errors import MetricsCacheKeyError
from ts.metrics.metric_type_enum import MetricTypes

COUNTERS = (
    "imdb_reviews_total",
    "imdb_explanations_total",
    "imdb_review_tokens_total",
    "imdb_unknown_tokens_total",
    "imdb_truncated_reviews_total",
    "imdb_request_errors_total",
    "imdb_worker_starts_total",
)
STARTS = "imdb_worker_starts_total"
HISTOGRAMS = ("imdb_batch_seconds", "imdb_explanation_seconds")
DIMENSIONS = ["model_name", "model_version"]


class ServingMetrics:
    """The metrics of one worker; ``cache`` is ``context.metrics`` (None: nothing is recorded)."""

    def __init__(self, cache, model_name: str, model_version: str | None):
        self.values = [model_name, model_version or "unversioned"]
        self.metrics = {}
        self.request_ids = ""  # the current batch's ids, logged with each metric line as TorchServe's own do
        if cache is None:
            return
        kinds = [(n, "Count", MetricTypes.COUNTER) for n in COUNTERS]
        kinds += [(n, "Seconds", MetricTypes.HISTOGRAM) for n in HISTOGRAMS]
        for name, unit, kind in kinds:
            try:
                self.metrics[name] = cache.get_metric(name, kind)
            except MetricsCacheKeyError:
                self.metrics[name] = cache.add_metric_to_cache(name, unit, DIMENSIONS, kind)

    def batch(self, request_ids: dict | None) -> None:
        self.request_ids = ",".join((request_ids or {}).values())

    def count(self, name: str, value: int) -> None:
        """Add ``value`` to counter ``name`` (zero too: the series then exists from the first batch on)."""
        if name in self.metrics:
            self.metrics[name].add_or_update(value, self.values, self.request_ids)

    def observe(self, name: str, seconds: float) -> None:
        if name in self.metrics:
            self.metrics[name].add_or_update(round(seconds, 6), self.values, self.request_ids)
