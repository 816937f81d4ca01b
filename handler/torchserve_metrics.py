"""The handler's own metrics through TorchServe's metrics API (``context.metrics``): the TorchServe
adapter's side of the core's two-method metrics interface. The names are ``handler.metric_names``'
(declared in ``metrics.yaml``; an undeclared one is added to the worker's cache so that it is still
logged).
"""

from __future__ import annotations

from ts.metrics.metric_cache_errors import MetricsCacheKeyError
from ts.metrics.metric_type_enum import MetricTypes

from handler.metric_names import COUNTERS, DIMENSIONS, HISTOGRAMS


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
