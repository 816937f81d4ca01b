"""The real SentimentHandler in this process, without TorchServe: the same JSON a server sends.

The client's ``--local`` mode, the benchmark, the GPU check, the README pictures and tests use it.
It takes plain strings, so nothing outside the serving side needs to know the handler's types.
The handler reads the ``handler:`` section of ``model-config.yaml`` through ``handler.settings``
(the defaults there when the file is absent, e.g. an installed client: they equal the shipped YAML).
Metrics go to TorchServe's metrics cache with its own metrics.yaml, as in a worker (logged, not served).
Imports TorchServe only when called.
"""

from __future__ import annotations

import json
from pathlib import Path

MODEL = "imdb_sentiment"
MODEL_CONFIG = Path(__file__).resolve().parent.parent / "model-config.yaml"


def local_handler(model_dir: Path, model_config: Path | None = None, batch_size: int = 8, gpu_id: int | None = None):
    """(SentimentHandler, ts Context) initialised as a TorchServe worker would, with batchSize
    ``batch_size``, on GPU ``gpu_id`` (None: the CPU)."""
    import ts
    import yaml
    from ts.context import Context
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

    from handler.sentiment_handler import SentimentHandler

    config_path = model_config or MODEL_CONFIG
    config = yaml.safe_load(config_path.read_text()) if config_path.exists() else {}
    metrics = MetricsCacheYamlImpl(config_file_path=str(Path(ts.__file__).parent / "configs" / "metrics.yaml"))
    metrics.initialize_cache()
    context = Context(
        MODEL,
        str(model_dir),
        {"model": {"modelName": MODEL}},
        batch_size,
        gpu_id,
        "0.12.0",
        metrics=metrics,
        model_yaml_config=config,
    )
    handler = SentimentHandler()
    handler.initialize(context)
    return handler, context


def answer(handler, context, texts: list[str], explain: bool) -> list[dict]:
    """Send ``texts`` through ``handler`` in batches of the context's batch size, as the frontend
    would, and read each reply as a client does."""
    return [json.loads(r) if isinstance(r, str) else r for r in replies(handler, context, texts, explain)]


def replies(handler, context, texts: list[str], explain: bool) -> list[str | dict]:
    """The handler's replies as the frontend receives them (compact JSON text), batch by batch."""
    from ts.context import RequestProcessor

    results = []
    size = context.system_properties["batch_size"]
    for start in range(0, len(texts), size):
        chunk = texts[start : start + size]
        context.request_processor = [RequestProcessor({"explain": str(explain)}) for _ in chunk]
        context.request_ids = {i: str(start + i) for i in range(len(chunk))}
        context.metrics.set_request_ids(context.request_ids)
        results += handler.handle([{"body": t.encode()} for t in chunk], context)
    return results


def answer_texts(
    texts: list[str], model_dir: Path, explain: bool = True, model_config: Path | None = None, batch_size: int = 8
) -> list[dict]:
    """Load the handler and answer ``texts`` in one call."""
    handler, context = local_handler(model_dir, model_config, batch_size)
    return answer(handler, context, texts, explain)
