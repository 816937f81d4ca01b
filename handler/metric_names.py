"""The model's metrics: one list of Prometheus names and labels for both servers.

Labels ``model_name`` and ``model_version``: counters of reviews, explanations, tokens, unknown
tokens, truncated reviews and request errors, and histograms of the handler time of one batch and
the engine time per explained review. TorchServe's adapter records them through its metrics API
(``handler.torchserve_metrics``), the KServe server through prometheus_client
(``kserve_server.metrics``); neither server's package is imported here.

``imdb_worker_starts_total`` counts the workers that loaded the model (1 per load; the frontend
keeps the total across its workers' lives), so a worker that died and was restarted shows as a
step in Prometheus, ``increase(imdb_worker_starts_total[1h]) > 1`` with one worker, even after the
logs that said so have rolled over.
"""

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
