"""imdb_sentiment on KServe's own Python model server (``kserve.Model`` + ``kserve.ModelServer``).

A second adapter over the server-neutral core (``handler.core``), beside the TorchServe handler:
the same artifacts, ``model-config.yaml`` and answers, on a server KServe maintains. Not in the
``.mar``: TorchServe never imports it.

- ``batcher``: the dynamic batching KServe's Python server does not have;
- ``metrics``: the core's counters and histograms on KServe's Prometheus endpoint;
- ``model``: ``SentimentModel`` (``load``/``predict``/``explain``, v1 and v2 metadata);
- ``routes``: what KServe's routes lack (versioned v2 routes, v2 explain, TorchServe's paths);
- ``server``: load, register and start (``python -m kserve_server``).
"""
