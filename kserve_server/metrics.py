"""The core's metrics on KServe's Prometheus endpoint (``/metrics``, ``prometheus_client``'s
default registry, which KServe serves): the same names, types and ``model_name`` /
``model_version`` labels as the TorchServe side (``handler.metric_names``), plus ``Hostname``
(the spelling TorchServe's frontend gives every backend metric; metrics.yaml uses it throughout), so one dashboard reads either server."""

from __future__ import annotations

import socket

from prometheus_client import REGISTRY, Counter, Histogram

from handler.metric_names import COUNTERS, HISTOGRAMS

LABELS = ("model_name", "model_version", "Hostname")
# TorchServe 0.12's histograms have the Prometheus client's default buckets (metrics.yaml): the same here.
_cache: dict[str, Counter | Histogram] = {}


def _metric(name: str) -> Counter | Histogram:
    """One collector per name per process (a second model object reuses it, as a registry requires)."""
    if name not in _cache:
        kind = Counter if name in COUNTERS else Histogram
        _cache[name] = kind(name, f"imdb_sentiment: {name}", LABELS, registry=REGISTRY)
    return _cache[name]


class PrometheusMetrics:
    """``handler.core.Metrics`` over prometheus_client, labelled with this model's name and version."""

    def __init__(self, model_name: str, model_version: str | None):
        labels = (model_name, model_version or "unversioned", socket.gethostname())
        self.series = {name: _metric(name).labels(*labels) for name in COUNTERS + HISTOGRAMS}

    def count(self, name: str, value: int) -> None:
        self.series[name].inc(value)

    def observe(self, name: str, seconds: float) -> None:
        self.series[name].observe(seconds)
