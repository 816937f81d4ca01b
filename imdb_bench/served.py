"""Served load: a real TorchServe driven by concurrent clients, against the same handler in-process.

usage: python scripts/bench_served.py [--servers torchserve kserve] [--batch-sizes 8] [--concurrency 1 8 32]
                                      [--requests 256] [--per-request 1]
                                      [--kinds explanations predictions] [--repeat 3] [--worker-threads T]
                                      [--max-batch-delay MS] [--workers N]
                                      [--artifacts DIR] [--data PATH] [--seed 0] [--out bench_results/served-cpu.json]

Both servers run side by side in one run by default: TorchServe, and KServe's Python model server
(kserve_server, the same .mar, its micro-batcher taking batchSize/maxBatchDelay from the same
model-config.yaml); each is measured against the same in-process reference.

The default run is issue 13's served mixed-length case: ``--requests`` IMDB test reviews at the
test set's real length mix (seeded), one review per request, so that TorchServe's batching puts
reviews of 7 to 512+ tokens side by side in each batch of the shipped batchSize (8).
``--per-request N`` sends N reviews per request instead, as KServe v1 ``instances`` (what a bulk
client does); rates are then reviews/s, and the in-process handler gets the very same bodies.

For each batchSize (maxBatchDelay as model-config.yaml ships it or ``--max-batch-delay``; 0 for
batchSize 1, where there is no batch to wait for) it builds a
.mar and starts TorchServe on free loopback ports in a temporary directory. Then, for each kind and
number of concurrent clients, back to back: the real handler in-process (handler/inprocess.py)
answers every request body, min(concurrency, batchSize) bodies per call (the reference: the most
that c clients, one request in flight each, can hand a batch; c=1 is one body at a time, as a lone
client is served), and the clients send every
body to the server (after a warm-up); ``--repeat`` such pairs per cell, the median ratio kept. On a
shared machine the load moves within seconds: measured side by side, both see much the same. The
server is stopped by pid whatever happens.
It prints a table, and last a line per kind with served / in-process at each concurrency: the
issue's target is >= 0.9 for explanations at 1, 8 and 32.
Worker threads: as model-config.yaml ships them (torch_threads); ``--worker-threads 0`` is torch's default.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from handler.text import TextSettings
from imdb_bench import inputs as bench_inputs
from imdb_bench import load as bench_load
from imdb_bench import record as bench_record

MODEL = "imdb_sentiment"
MODEL_CONFIG = bench_inputs.REPO / "model-config.yaml"
KINDS = ("explanations", "predictions")
SERVERS = ("torchserve", "kserve")


def request_bodies(texts: list[str], per_request: int) -> list[str]:
    """One JSON body per request: {"text": ...}, or KServe v1 {"instances": [...]} of ``per_request``."""
    if per_request == 1:
        return [json.dumps({"text": t}) for t in texts]
    groups = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
    return [json.dumps({"instances": [{"text": t} for t in g]}) for g in groups]


class InProcess:
    """The served path without the server: the real handler (handler/inprocess.py) answers the
    same request bodies (decode, tokenize, engine, JSON-ready answers), ``requests_per_call``
    bodies per call as one full frontend batch. Loading and one warm-up per kind are not timed.
    The handler sets its own torch threads from model-config.yaml, as in the served worker;
    ``threads`` (the served worker's --worker-threads, 0: torch's default) replaces them."""

    def __init__(self, artifacts: Path, bodies: list[str], reviews: int, threads: int | None = None):
        self.artifacts, self.bodies, self.reviews, self.threads = artifacts, bodies, reviews, threads
        self._handlers: dict[int, tuple] = {}
        self._warm: set[tuple[int, bool]] = set()

    def rate(self, kind: str, requests_per_call: int) -> float:
        """Reviews/s of one pass over all bodies."""
        from handler.inprocess import replies

        handler, context = self._handler(requests_per_call)
        explain = kind == "explanations"
        self._warm_up(handler, context, requests_per_call, explain)
        t0 = time.perf_counter()
        raw = replies(handler, context, self.bodies, explain)  # what the worker hands the frontend
        per_s = self.reviews / (time.perf_counter() - t0)
        self._check(raw)
        return per_s

    def _handler(self, requests_per_call: int) -> tuple:
        """(handler, context) for ``requests_per_call`` bodies per call, loaded once; torch's threads set
        after the load, since the handler sets its own from model-config.yaml as it loads."""
        from handler.inprocess import local_handler

        if requests_per_call not in self._handlers:
            self._handlers[requests_per_call] = local_handler(self.artifacts, batch_size=requests_per_call)
            if self.threads is not None:
                import torch

                torch.set_num_threads(self.threads or os.cpu_count() or 1)
        return self._handlers[requests_per_call]

    def _warm_up(self, handler, context, requests_per_call: int, explain: bool) -> None:
        """Two calls' worth of bodies, untimed, the first time a (bodies per call, kind) is measured."""
        from handler.inprocess import replies

        if (requests_per_call, explain) not in self._warm:
            replies(handler, context, self.bodies[: 2 * requests_per_call], explain)
            self._warm.add((requests_per_call, explain))

    def _check(self, raw: list) -> None:
        """One answer per body and none an error: a failing handler must not pass for a fast one."""
        answers = [json.loads(r) if isinstance(r, str) else r for r in raw]
        failed = [a for a in answers if "error" in a or "code" in a]
        if len(answers) != len(self.bodies) or failed:
            raise RuntimeError(f"in-process handler: {len(answers)} answers to {len(self.bodies)}, e.g. {failed[:1]}")


@dataclass
class KServeServer:
    """The KServe server as the load generator sees a server: a URL and (no) keys."""

    inference: str

    def keys(self) -> dict:
        return {"inference": ""}


@contextlib.contextmanager
def server(name: str, artifacts: Path, model_config: dict, worker_threads: int | None) -> Iterator:
    """TorchServe or the KServe server serving ``artifacts`` with ``model_config`` over the shipped
    model-config.yaml (batching, workers), built into a .mar in a temporary directory, on free
    loopback ports; stopped by pid whatever happens."""
    from imdb_ops import build_mar, serve, serve_kserve

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work, store = Path(tmp), Path(tmp) / "store"
        handler = yaml.safe_load(MODEL_CONFIG.read_text())["handler"]
        if worker_threads is not None:
            handler["torch_threads"] = worker_threads
        mar = build_mar.build(artifacts, store, handler=handler, **model_config)
        if name == "kserve":
            with serve_kserve.running(mar) as url:
                yield KServeServer(url)
            return
        config = serve.isolated_config(work / "config.properties", model_store=str(store))
        with serve.running(work, config, store) as running:
            yield running


def pair(server, inprocess: InProcess, per_request: int, kind: str, concurrency: int, labels: dict) -> dict:
    """Back to back: the in-process handler on batches as large as ``concurrency`` clients can make
    them (at most batchSize), then every body sent to the server from ``concurrency`` clients
    (after a warm-up)."""
    per_call = min(concurrency, labels["batchSize"])
    reference = inprocess.rate(kind, per_call)
    key, raw = server.keys()["inference"], [b.encode() for b in inprocess.bodies]
    res = bench_load.drive(f"{server.inference}/{kind}/{MODEL}", key, raw, concurrency)
    res["reviews_per_s"] = res["per_s"] * per_request
    row = {"kind": kind, **labels, "concurrency": concurrency, **res}
    return row | {
        "inprocess_per_call": per_call,
        "inprocess_reviews_per_s": reference,
        "ratio": res["reviews_per_s"] / reference,
    }


def measure(
    server, inprocess: InProcess, per_request: int, kind: str, concurrency: int, labels: dict, repeat: int = 1
) -> dict:
    """One cell: ``repeat`` back-to-back pairs (in-process, served). The load of a shared machine
    moves within seconds, so each served figure is divided by the reference measured beside it, and
    the cell reports the pair with the median ratio, all ratios in ``ratio_runs``, and all errors."""
    runs = [pair(server, inprocess, per_request, kind, concurrency, labels) for _ in range(repeat)]
    row = sorted(runs, key=lambda r: r["ratio"])[len(runs) // 2]
    row = row | {"errors": sum(r["errors"] for r in runs), "ratio_runs": [r["ratio"] for r in runs]}
    print(
        f"  {labels['server']:10s} {kind:12s} batchSize={labels['batchSize']:<3d} c={concurrency:<3d} served {row['reviews_per_s']:8.1f} "
        f"reviews/s (p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, errors {row['errors']}), in-process "
        f"{row['inprocess_reviews_per_s']:8.1f}: {row['ratio']:.2f} (runs {', '.join(f'{x:.2f}' for x in row['ratio_runs'])})",
        flush=True,
    )
    return row


def set_worker_threads(worker_threads: int | None) -> None:
    """The worker inherits OMP_NUM_THREADS; 0 means torch's default (unset), None leaves it."""
    if worker_threads:
        os.environ["OMP_NUM_THREADS"] = str(worker_threads)
    elif worker_threads == 0:
        os.environ.pop("OMP_NUM_THREADS", None)


SERVED_COLUMNS = {
    "server": "server",
    "kind": "endpoint",
    "batchSize": "batchSize",
    "maxBatchDelay": "maxBatchDelay ms",
    "workers": "workers",
    "concurrency": "concurrency",
    "requests": "requests",
    "errors": "errors",
    "per_s": "requests/s",
    "reviews_per_s": "reviews/s",
    "p50_ms": "p50 ms",
    "p99_ms": "p99 ms",
    "inprocess_per_call": "in-process bodies per call",
    "inprocess_reviews_per_s": "in-process reviews/s",
    "ratio": "served / in-process",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    shipped = yaml.safe_load(MODEL_CONFIG.read_text())
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS), help="servers, side by side")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[shipped["batchSize"]], help="batchSize of each .mar")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="concurrent clients")
    p.add_argument("--requests", type=int, default=256, help="reviews sent per kind and concurrency")
    p.add_argument("--per-request", type=int, default=1, help="reviews per request (>1: KServe v1 instances)")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="endpoints")
    p.add_argument("--repeat", type=int, default=3, help="back-to-back (in-process, served) pairs per cell")
    p.add_argument("--worker-threads", type=int, default=None, help="torch threads of the worker (0: torch's)")
    p.add_argument("--max-batch-delay", type=int, default=shipped["maxBatchDelay"], help="ms (default: as shipped)")
    p.add_argument("--workers", type=int, default=shipped["minWorkers"], help="workers (default: as shipped)")
    bench_inputs.add_common(p)
    a = p.parse_args(argv)
    a.out = a.out or bench_record.default_path("served")
    return a


def serve_cells(a: argparse.Namespace, inprocess: InProcess, threads: int | str) -> list[dict]:
    """Every cell: for each server and batchSize one server (built and started afresh), for each kind
    and concurrency ``a.repeat`` pairs against ``inprocess``."""
    served = []
    for name, batch_size in itertools.product(a.servers, a.batch_sizes):
        delay = 0 if batch_size == 1 else a.max_batch_delay
        labels = {"server": name, "batchSize": batch_size, "maxBatchDelay": delay, "workers": a.workers}
        labels["worker_threads"] = threads
        model_config = {
            "batchSize": batch_size,
            "maxBatchDelay": delay,
            "minWorkers": a.workers,
            "maxWorkers": a.workers,
        }
        with server(name, a.artifacts, model_config, a.worker_threads) as running:
            for kind, c in itertools.product(a.kinds, a.concurrency):
                served.append(measure(running, inprocess, a.per_request, kind, c, labels, a.repeat))
    return served


def print_ratios(a: argparse.Namespace, served: list[dict]) -> None:
    """The last lines: served / in-process at each concurrency, one line per server, kind and batchSize."""
    for name, kind, bs in itertools.product(a.servers, a.kinds, a.batch_sizes):
        cells = [
            f"c={r['concurrency']}:{r['ratio']:.2f}"
            for r in served
            if (r["server"], r["kind"], r["batchSize"]) == (name, kind, bs)
        ]
        print(f"served_vs_inprocess {name} {kind} batchSize={bs} {' '.join(cells)}")


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    machine = bench_record.machine_info("cpu")  # before any work of ours
    texts, token_lists = bench_inputs.pick_reviews(a.data, a.requests, a.seed, "imdb")
    record = bench_inputs.inputs_record(token_lists, TextSettings.load(a.artifacts), a.seed, "imdb")
    record["per_request"] = a.per_request
    print(f"# served load: {a.requests} IMDB test reviews at the real length mix, {a.per_request} per request")
    print(f"token lengths: {record['token_lengths']}", flush=True)
    bodies = request_bodies(texts, a.per_request)
    set_worker_threads(a.worker_threads)
    threads = "as shipped" if a.worker_threads is None else a.worker_threads or "torch default"
    inprocess = InProcess(a.artifacts, bodies, len(texts), a.worker_threads)
    served = serve_cells(a, inprocess, threads)
    # What a lone request costs the handler (the c=1 case's own ceiling, maxBatchDelay aside).
    single = [{"kind": k, "requests_per_call": 1, "reviews_per_s": inprocess.rate(k, 1)} for k in a.kinds]
    path = bench_record.write(
        a.out,
        "served",
        bench_record.command_line(argv, "scripts/bench_served.py"),
        machine,
        record,
        served=served,
        handler_one_request_per_call=single,
    )
    rows = [{**r, "ratio": f"{r['ratio']:.2f}"} for r in served]
    print("\n" + bench_record.markdown(rows, SERVED_COLUMNS) + "\n")
    print("in-process, one request per call: " + ", ".join(f"{r['kind']} {r['reviews_per_s']:.1f}/s" for r in single))
    print(f"JSON: {path}")
    print_ratios(a, served)
    return bench_record.load(path)


if __name__ == "__main__":
    main()
