"""In-process handler workers: N processes, each running the real handler on one device.

usage: python scripts/bench_workers.py [--device cpu|cuda] [--workers 1 4 8 15] [--n 2048] [--lengths 256]
                                       [--artifacts DIR] [--data PATH] [--seed 0] [--out bench_results/workers-<device>.json]

No TorchServe runs here: each process loads the handler as a TorchServe worker would
(handler/inprocess.py: a real ts Context, batchSize 32) and explains, starting together with the
others, 4 calls of 32 KServe v1 requests x 64 reviews. That is the handler's whole work per request
(decode, spaCy, engine, JSON-ready answers) without the frontend, its HTTP and its worker protocol:
what N workers could give at most. Aggregate explanations/s = all reviews / the slowest process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import threading
import time
from pathlib import Path

from handler.text import TextSettings
from imdb_bench import inputs as bench_inputs
from imdb_bench import record as bench_record

REQUESTS, PER_REQUEST, CALLS = 32, 64, 4  # KServe v1 requests per call, reviews per request, timed calls


def kserve_batch(texts: list[str], requests: int, per_request: int) -> list[dict]:
    """``requests`` TorchServe rows, each a KServe v1 body of ``per_request`` instances (``texts``
    repeated if fewer)."""
    texts = bench_inputs.cycle(texts, requests * per_request)
    return [
        {
            "body": json.dumps(
                {"instances": [{"text": t} for t in texts[i * per_request : (i + 1) * per_request]]}
            ).encode()
        }
        for i in range(requests)
    ]


def explain_worker(artifacts: str, texts: list[str], gpu_id: int | None, shape: tuple, barrier, results) -> None:
    """One worker process: load, warm up, wait for the others, time ``calls`` explained batches of
    ``requests`` x ``per_request`` reviews (``shape``). Puts its time, or its error as a string on
    the queue, so that the parent never waits out a timeout for a worker that failed."""
    try:
        handler, context, body = _load_worker(artifacts, texts, gpu_id, shape)
    except Exception as e:  # noqa: BLE001  (any failure must reach the parent)
        barrier.abort()
        results.put(f"worker failed to start: {e!r}")
        return
    barrier.wait(timeout=600)
    t0 = time.perf_counter()
    for _ in range(shape[2]):
        out = handler.handle(body, context)
    elapsed = time.perf_counter() - t0
    out = [json.loads(o) if isinstance(o, str) else o for o in out]  # compact JSON, as the frontend gets it
    explained = all(len(o.get("explanations", ())) == shape[1] for o in out) and all(
        "attributions" in e for o in out for e in o["explanations"]
    )
    results.put(elapsed if explained else f"a worker's answer lacks explanations: {str(out[0])[:300]}")


def _load_worker(artifacts: str, texts: list[str], gpu_id: int | None, shape: tuple):
    """(handler, context, rows) loaded and warmed up, the header explain="True" on every row."""
    from ts.context import RequestProcessor

    from handler.inprocess import local_handler

    requests, per_request, _ = shape
    handler, context = local_handler(Path(artifacts), batch_size=requests, gpu_id=gpu_id)
    body = kserve_batch(texts, requests, per_request)
    context.request_processor = [RequestProcessor({"explain": "True"}) for _ in body]
    context.request_ids = {i: str(i) for i in range(len(body))}
    handler.handle(body, context)  # warm-up
    return handler, context, body


def run_workers(
    artifacts: Path, texts: list[str], n: int, gpu_id: int | None, shape: tuple = (REQUESTS, PER_REQUEST, CALLS)
) -> dict:
    """``n`` worker processes starting together, each explaining ``calls`` batches of ``requests``
    KServe requests x ``per_request`` reviews (``shape``); all their reviews / the slowest one's time."""
    ctx = multiprocessing.get_context("spawn")  # CUDA does not survive fork
    barrier, results = ctx.Barrier(n + 1), ctx.Queue()
    procs = [
        ctx.Process(
            target=explain_worker, args=(str(artifacts), texts[i:] + texts[:i], gpu_id, shape, barrier, results)
        )
        for i in range(n)
    ]
    for p in procs:
        p.start()
    try:
        with contextlib.suppress(threading.BrokenBarrierError):  # a worker that failed to load broke it
            barrier.wait(timeout=600)  # every worker loaded and warmed up
        elapsed = [results.get(timeout=600) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=60)
    failures = [e for e in elapsed if isinstance(e, str)]
    if failures:
        raise RuntimeError(failures[0])
    reviews = n * shape[0] * shape[1] * shape[2]
    return {"workers": n, "reviews": reviews, "per_s": reviews / max(elapsed), "gpu_id": gpu_id}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8, 15], help="process counts to run in turn")
    p.add_argument("--n", type=int, default=2048, help="reviews in the sample (>= 2,048 = one call's worth)")
    p.add_argument("--lengths", choices=("imdb", "256"), default="256")
    bench_inputs.add_common(p)
    a = p.parse_args(argv)
    a.out = a.out or bench_record.default_path("workers", a.device)
    return a


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    import torch

    gpu_id = (torch.device(a.device).index or 0) if a.device.startswith("cuda") else None
    machine = bench_record.machine_info(a.device)
    texts, token_lists = bench_inputs.pick_reviews(a.data, a.n, a.seed, a.lengths)
    record = bench_inputs.inputs_record(token_lists, TextSettings.load(a.artifacts), a.seed, a.lengths)
    record["per_call"] = f"{REQUESTS} KServe v1 requests x {PER_REQUEST} reviews, {CALLS} timed calls per process"
    print(f"# in-process handler workers on {a.device} (no TorchServe): {record['per_call']}", flush=True)
    rows = []
    for n in a.workers:
        rows.append(run_workers(a.artifacts, texts, n, gpu_id))
        print(
            f"  {n:2d} in-process handler workers on {a.device}: {rows[-1]['per_s']:10,.0f} explanations/s", flush=True
        )
    path = bench_record.write(
        a.out,
        "workers",
        bench_record.command_line(argv, "scripts/bench_workers.py"),
        machine,
        record,
        handler_workers=rows,
    )
    print(f"JSON: {path}")
    return bench_record.load(path)


if __name__ == "__main__":
    main()
