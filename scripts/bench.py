"""usage: python scripts/bench.py [--quick] [--device cpu|cuda] [--lengths imdb|256] [--n 256] [--batch-size 32]
                               [--captum-batch-size B] [--fast-batch-sizes B ...] [--tutorial-n 16] [--steps 50]
                               [--chunk-elements N] [--repeat R] [--threads T] [--no-serve | --serve-only]
                               [--requests 256] [--serve-batch 1 8] [--max-batch-delay 10] [--concurrency 1 8 32]
                               [--worker-threads T] [--workers N ...] [--artifacts model_store/artifacts] [--data PATH]
                               [--seed 0] [--out bench_results/bench-<device>.json]

Benchmark Layer-IG explanations (issue 5): the tutorial's way vs batched Captum vs this project's engine.

In-process, side by side on the same IMDB test reviews (a seeded sample, real lengths, or with
``--lengths 256`` only reviews of 200-300 tokens, the "256-token reviews" of the issue's targets):

  tutorial         Captum LayerIntegratedGradients, n_steps=500, Captum's default method
                   (gausslegendre), one review per call -- the Captum IMDB tutorial's way
  captum batched   plain Captum, default settings (n_steps=50, gausslegendre), a whole batch per call
  fast             this project's engine at the same steps, adaptive (rtol 1e-3), and method "exact"

Each case reports reviews/s, p50/p99 per-call latency and the achieved relative delta
|delta| / |F(x) - F(ref)| (median, p90); the fast engine's attributions are compared with Captum's
at equal steps. Then (CPU only, unless --no-serve) a real TorchServe is started per batchSize
variant on free loopback ports and driven with 1, 8 and 32 concurrent clients, for predictions
and explanations. A markdown table goes to stdout and everything to a JSON file.

``--quick``: in-process only, 64 reviews, the tutorial way timed on the first 8 of them; the last
line is ``speedup_vs_tutorial=<x> speedup_vs_captum_batched=<y> rel_delta_p90=<z>``; with the default
``--headline exact`` for the served configuration (the exact integral, whose cost is the same at any
step count) against Captum batched at --steps; with ``--headline steps``, all for the
fast engine at --steps (default 50, gausslegendre), the configuration compared at equal steps.

``--device cuda``: in-process only, float32 with TF32 off, CUDA synchronised around every timed
call, the fast engine at 64..4096 reviews per call; defaults to 256-token reviews.

``--workers 1 4 8``: N processes each running the real handler on the device (as N TorchServe
workers would), explaining KServe v1 batches of 32 requests x 64 reviews; aggregate reviews/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from handler.attribution import Attribution, IGSettings, layer_ig  # noqa: E402
from handler.model import load_model  # noqa: E402
from handler.text import EncodedBatch, Vocab, encode, tokenize  # noqa: E402

MIN_LEN, MAX_TOKENS = 7, 512  # the handler's defaults (model-config.yaml)
BAND_256 = (200, 300)  # "256-token reviews": real reviews of 200..300 tokens
WHOLE_BATCH = 10**15  # chunk_elements so large that layer_ig runs the whole batch in one Captum call


# ----------------------------------------------------------------------------- inputs


def pick_reviews(data: str | None, n: int, seed: int, lengths: str) -> tuple[list[str], list[list[str]]]:
    """Texts and token lists of ``n`` IMDB test reviews chosen by a seeded shuffle (deterministic).

    ``lengths="imdb"`` keeps the first ``n`` of the shuffle, so lengths follow the test set's own
    distribution. ``"256"`` keeps, in shuffle order, reviews with 200..300 tokens; to avoid
    tokenizing the whole test set only reviews whose whitespace word count is plausible
    (120..320 words) are tokenized. ``data`` may also be a ``label<TAB>text`` TSV (what
    scripts/gpu_check.sh carries to a GPU machine instead of the tarball).
    """
    import imdb_data

    if data and str(data).endswith(".tsv"):
        texts = imdb_data.load_tsv(Path(data)).texts
    else:
        texts = imdb_data.load(imdb_data.locate(data), splits=("test",))["test"].texts
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    if lengths == "imdb":
        chosen = [texts[i] for i in order[:n]]
        return chosen, tokenize(chosen)
    lo, hi = BAND_256
    candidates = [i for i in order if 120 <= len(texts[i].split()) <= 320]
    kept: list[tuple[str, list[str]]] = []
    for start in range(0, len(candidates), 512):
        chunk = [texts[i] for i in candidates[start : start + 512]]
        kept += [(text, t) for text, t in zip(chunk, tokenize(chunk)) if lo <= len(t) <= hi]
        if len(kept) >= n:
            return [k[0] for k in kept[:n]], [k[1] for k in kept[:n]]
    raise RuntimeError(f"only {len(kept)} test reviews have {lo}..{hi} tokens; asked for {n}")


def length_stats(token_lists: list[list[str]]) -> dict:
    """Token-length distribution as served: before truncation, and how many exceed MAX_TOKENS."""
    n = np.array([len(t) for t in token_lists])
    q = np.percentile(n, [0, 10, 50, 90, 99, 100])
    return {
        "n": int(n.size),
        "mean": round(float(n.mean()), 1),
        "min": int(q[0]),
        "p10": int(q[1]),
        "p50": int(q[2]),
        "p90": int(q[3]),
        "p99": int(q[4]),
        "max": int(q[5]),
        "truncated_at_%d" % MAX_TOKENS: int((n > MAX_TOKENS).sum()),
    }


def batches_of(token_lists: list[list[str]], vocab: Vocab, size: int, device: str) -> list[EncodedBatch]:
    """Consecutive batches in sample order (no length sorting: that is the engine's own business)."""
    return [
        encode(token_lists[i : i + size], vocab, MIN_LEN, MAX_TOKENS).to(device)
        for i in range(0, len(token_lists), size)
    ]


# ----------------------------------------------------------------------------- in-process cases


@dataclass
class Case:
    name: str
    settings: IGSettings
    batch_size: int
    n_reviews: int  # how many of the sample it runs on (the tutorial way may take a prefix)
    repeat: int = 1  # timed passes over its batches (GPU calls are short)


@dataclass
class CaseResult:
    name: str
    engine: str
    method: str
    steps: str
    batch_size: int
    reviews: int
    calls: int
    reviews_per_s: float
    p50_ms: float
    p99_ms: float
    rel_delta_median: float
    rel_delta_p90: float
    rel_delta_max: float
    mean_steps_used: float
    attributions: list = field(default_factory=list, repr=False)  # per review, trimmed; not in JSON


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_case(model, token_lists, vocab, case: Case, device: str) -> CaseResult:
    """Time ``layer_ig`` per call (inputs encoded and on the device beforehand)."""
    batches = batches_of(token_lists[: case.n_reviews], vocab, case.batch_size, device)
    # Warm-up. Fast engine: one untimed pass over all batches, so every step count adaptive mode
    # reaches has its quadrature cached, as in a worker that has served a while (a first
    # Gauss-Legendre rule of 1,024 nodes costs ~0.3 s). Captum has no such cache to warm.
    warm = batches if case.settings.engine == "fast" else [encode([t[:64] for t in token_lists[:2]], vocab).to(device)]
    for b in warm:
        layer_ig(model, b.ids, b.lengths, case.settings)
    latencies, rel, steps, attrs = [], [], [], []
    for rep in range(case.repeat):
        for b in batches:
            sync(device)
            t0 = time.perf_counter()
            out: Attribution = layer_ig(model, b.ids, b.lengths, case.settings)
            sync(device)
            latencies.append(time.perf_counter() - t0)
            if rep == 0:
                rel += out.relative_delta().cpu().tolist()
                steps += out.n_steps.float().cpu().tolist()
                attrs += [out.attributions[j, : int(b.lengths[j])].cpu() for j in range(len(b.lengths))]
    lat = np.array(latencies)
    r = np.array(rel)
    s = case.settings
    steps_label = (
        "exact"
        if s.method == "exact"
        else (f"{s.n_steps}..{s.max_steps} (rtol {s.rtol:g})" if s.adaptive else str(s.n_steps))
    )
    return CaseResult(
        case.name,
        s.engine,
        s.method,
        steps_label,
        case.batch_size,
        case.n_reviews,
        len(latencies),
        case.n_reviews * case.repeat / float(lat.sum()),
        1000 * float(np.percentile(lat, 50)),
        1000 * float(np.percentile(lat, 99)),
        float(np.median(r)),
        float(np.percentile(r, 90)),
        float(r.max()),
        float(np.mean(steps)),
        attrs,
    )


def max_rel_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """max over reviews of max|a - b| / max|b|: relative to each review's largest attribution
    (element-wise ratios would blow up on attributions that are ~0)."""
    return max(float((x - y).abs().max() / y.abs().max().clamp_min(1e-30)) for x, y in zip(a, b))


def arbitrate(
    model, token_lists, vocab, fast: CaseResult, captum: CaseResult, steps: int, device: str, limit: int = 16
) -> dict:
    """How the fast engine and Captum (both float32, equal steps) agree review by review, and who is
    right where they differ by more than 1e-5: Captum in float64 decides, on up to ``limit`` of
    those reviews. Also compared there: attributions summed per token id, which do not depend on
    which copy of a repeated phrase wins a max-pool tie (the copies hold the same tokens)."""
    per_review = np.array([max_rel_diff([x], [y]) for x, y in zip(fast.attributions, captum.attributions)])
    report = {
        "reviews": len(per_review),
        "p50": float(np.median(per_review)),
        "p99": float(np.percentile(per_review, 99)),
        "max": float(per_review.max()),
        "over_1e-5": int((per_review > 1e-5).sum()),
    }
    worst = [int(i) for i in np.argsort(-per_review)[:limit] if per_review[i] > 1e-5]
    if not worst:
        return report
    double = type(model)(model.config).double().to(device).eval()
    double.load_state_dict(model.state_dict())
    batch = encode([token_lists[i] for i in worst], vocab, MIN_LEN, MAX_TOKENS).to(device)
    truth = layer_ig(
        double,
        batch.ids,
        batch.lengths,
        IGSettings(engine="captum", method="gausslegendre", n_steps=steps, chunk_elements=WHOLE_BATCH),
    ).attributions
    truth = [truth[j, : int(n)].cpu() for j, n in enumerate(batch.lengths)]
    ids = [batch.ids[j, : int(n)].cpu() for j, n in enumerate(batch.lengths)]

    def per_token(attr: list[torch.Tensor]) -> list[torch.Tensor]:
        return [
            torch.zeros(int(i.max()) + 1, dtype=torch.float64).index_add_(0, i, a.double()) for i, a in zip(ids, attr)
        ]

    fast_w, captum_w = [fast.attributions[i].double() for i in worst], [captum.attributions[i].double() for i in worst]
    report["arbitrated"] = {
        "reviews": len(worst),
        "fast_float32_vs_captum_float64": max_rel_diff(fast_w, truth),
        "captum_float32_vs_captum_float64": max_rel_diff(captum_w, truth),
        "per_token_id": {
            "fast_float32_vs_captum_float32": max_rel_diff(per_token(fast_w), per_token(captum_w)),
            "fast_float32_vs_captum_float64": max_rel_diff(per_token(fast_w), per_token(truth)),
            "captum_float32_vs_captum_float64": max_rel_diff(per_token(captum_w), per_token(truth)),
        },
    }
    return report


def in_process_cases(args) -> list[Case]:
    gl = IGSettings(engine="fast", method="gausslegendre", n_steps=args.steps, chunk_elements=args.chunk_elements)
    cases = [
        Case("tutorial", IGSettings(engine="captum", method="gausslegendre", n_steps=500), 1, args.tutorial_n),
        Case(
            "captum batched",
            IGSettings(engine="captum", method="gausslegendre", n_steps=args.steps, chunk_elements=WHOLE_BATCH),
            args.captum_batch_size,
            args.n,
        ),
    ]
    fast_sizes = args.fast_batch_sizes or [args.batch_size]
    for size in fast_sizes:
        suffix = "" if len(fast_sizes) == 1 else f" B={size}"
        cases += [
            Case(f"fast{suffix}", gl, size, args.n, args.repeat),
            Case(f"fast 500 steps{suffix}", replace(gl, n_steps=500), size, args.n, args.repeat),
            Case(f"fast adaptive{suffix}", replace(gl, adaptive=True, rtol=1e-3), size, args.n, args.repeat),
            Case(f"fast exact{suffix}", replace(gl, method="exact"), size, args.n, args.repeat),
        ]
    return cases


# ----------------------------------------------------------------------------- TorchServe


def drive(url: str, key: str, bodies: list[bytes], concurrency: int) -> dict:
    """Send every body once from ``concurrency`` concurrent clients, each on its own keep-alive
    connection, and time each request.

    One asyncio loop writing raw HTTP/1.1: the load generator shares the 2 cores with the server it
    measures, so it must be cheap. (The first version, ``requests`` sessions on 32 threads, cost
    more CPU per request than the worker's own batched prediction.)"""
    return asyncio.run(_drive(urllib.parse.urlsplit(url), key, bodies, concurrency))


async def _drive(url, key: str, bodies: list[bytes], concurrency: int) -> dict:
    head = (
        f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\n"
    ).encode()
    conns = [await asyncio.open_connection(url.hostname, url.port) for _ in range(concurrency)]

    async def client(conn, queue: list[bytes], out: list) -> None:
        reader, writer = conn
        while queue:
            body = queue.pop()
            t0 = time.perf_counter()
            writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            status = int((await reader.readline()).split()[1])
            length, chunked = 0, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                length = int(value) if name.lower() == "content-length" else length
                chunked = chunked or (name.lower() == "transfer-encoding" and "chunked" in value.lower())
            if chunked:
                while size := int((await reader.readline()).split(b";")[0], 16):
                    await reader.readexactly(size + 2)
                await reader.readline()
            else:
                await reader.readexactly(length)
            out.append((time.perf_counter() - t0, status))

    async def run(batch: list[bytes]) -> tuple[list, float]:
        queue, out = list(reversed(batch)), []
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c, queue, out) for c in conns))
        return out, time.perf_counter() - t0

    await run(bodies[: 2 * concurrency])  # warm-up: connections, worker, batch shapes
    results, wall = await run(bodies)
    for _, writer in conns:
        writer.close()
    lat = np.array([r[0] for r in results])
    return {
        "requests": len(bodies),
        "errors": sum(r[1] != 200 for r in results),
        "per_s": len(bodies) / wall,
        "p50_ms": 1000 * float(np.percentile(lat, 50)),
        "p99_ms": 1000 * float(np.percentile(lat, 99)),
    }


def serve_bench(
    artifacts: Path,
    texts: list[str],
    batch_sizes: list[int],
    delay_ms: int,
    concurrencies: list[int],
    n_requests: int,
    worker_threads: int | None = None,
) -> list[dict]:
    """Per batchSize: build a .mar, start TorchServe in a temp workdir, drive it, always stop it.

    ``worker_threads`` (None: as model-config.yaml says) sets the worker's torch threads, 0 meaning
    torch's default: through OMP_NUM_THREADS, which the worker inherits, and the handler's
    ``torch_threads`` where model-config.yaml has it. On a 2-core machine shared with the Java
    frontend and the clients, a 2-thread torch op waits for whichever core is busy elsewhere.
    """
    import build_mar
    import serve

    if worker_threads:
        os.environ["OMP_NUM_THREADS"] = str(worker_threads)  # read by the worker's torch at start
    elif worker_threads == 0:
        os.environ.pop("OMP_NUM_THREADS", None)

    bodies = [json.dumps({"text": t}).encode() for t in texts]
    bodies = (bodies * (n_requests // len(bodies) + 1))[:n_requests]
    rows = []
    for batch_size in batch_sizes:
        delay = 0 if batch_size == 1 else delay_ms
        with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
            work = Path(tmp)
            store = work / "store"
            handler = yaml.safe_load((REPO / "model-config.yaml").read_text())["handler"]
            if worker_threads is not None:
                handler["torch_threads"] = worker_threads
            build_mar.build(artifacts, store, batchSize=batch_size, maxBatchDelay=delay, handler=handler)
            server = None
            try:
                server = serve.start(
                    work, serve.isolated_config(work / "config.properties", model_store=str(store)), store
                )
                key = server.keys()["inference"]
                for kind in ("predictions", "explanations"):
                    for c in concurrencies:
                        res = drive(f"{server.inference}/{kind}/imdb_sentiment", key, bodies, c)
                        rows.append(
                            {
                                "kind": kind,
                                "batchSize": batch_size,
                                "maxBatchDelay": delay,
                                "worker_threads": "as shipped"
                                if worker_threads is None
                                else worker_threads or "torch default",
                                "concurrency": c,
                                **res,
                            }
                        )
                        print(
                            f"  serve {kind:12s} batchSize={batch_size:<3d} threads={worker_threads} c={c:<3d} {res['per_s']:8.1f}/s "
                            f"p50 {res['p50_ms']:.1f} ms p99 {res['p99_ms']:.1f} ms errors {res['errors']}",
                            flush=True,
                        )
            finally:
                if server is not None:
                    serve.stop(server)
    return rows


def handler_bench(artifacts: Path, texts: list[str], batch_sizes: list[int], n_requests: int) -> list[dict]:
    """The served path without the server: the real handler in this process (decode, tokenize,
    engine, JSON-ready answers), batchSize requests per call, one thread like the served worker.
    Server overhead = this figure / the TorchServe figure at the same batchSize."""
    from handler.inprocess import answer, local_handler

    reviews = (texts * (n_requests // len(texts) + 1))[:n_requests]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for batch_size in batch_sizes:
            handler, context = local_handler(artifacts, batch_size=batch_size)  # loading is not timed
            for explain in (False, True):
                answer(handler, context, reviews[:batch_size], explain)  # warm-up
                t0 = time.perf_counter()
                answer(handler, context, reviews, explain)
                per_s = len(reviews) / (time.perf_counter() - t0)
                kind = "explanations" if explain else "predictions"
                rows.append({"kind": kind, "batchSize": batch_size, "per_s": per_s})
                print(f"  handler in-process {kind:12s} batchSize={batch_size:<3d} {per_s:8.1f}/s", flush=True)
    finally:
        torch.set_num_threads(threads)
    return rows


def workers_bench(
    artifacts: Path,
    texts: list[str],
    counts: list[int],
    gpu_id: int | None,
    requests: int = 32,
    per_request: int = 64,
    calls: int = 4,
) -> list[dict]:
    """N copies of the real handler in N processes, as TorchServe runs N workers, all on one device:
    each explains ``calls`` batches of ``requests`` KServe v1 requests x ``per_request`` reviews,
    starting together. The served explain path end to end (decode, spaCy, engine, answers)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # CUDA does not survive fork
    rows = []
    for n in counts:
        barrier, results = ctx.Barrier(n + 1), ctx.Queue()
        procs = [
            ctx.Process(
                target=_explain_worker,
                args=(str(artifacts), texts[i:] + texts[:i], gpu_id, requests, per_request, calls, barrier, results),
            )
            for i in range(n)
        ]
        for p in procs:
            p.start()
        barrier.wait(timeout=600)  # every worker loaded and warmed up
        elapsed = [results.get(timeout=600) for _ in procs]
        for p in procs:
            p.join()
        reviews = n * calls * requests * per_request
        rows.append({"workers": n, "reviews": reviews, "per_s": reviews / max(elapsed), "gpu_id": gpu_id})
        print(
            f"  {n:2d} handler workers on {'cuda:%d' % gpu_id if gpu_id is not None else 'cpu'}: "
            f"{rows[-1]['per_s']:10,.0f} explanations/s",
            flush=True,
        )
    return rows


def _explain_worker(artifacts, texts, gpu_id, requests, per_request, calls, barrier, results) -> None:
    from ts.context import RequestProcessor

    from handler.inprocess import local_handler

    handler, context = local_handler(Path(artifacts), batch_size=requests, gpu_id=gpu_id)
    body = [
        {
            "body": json.dumps(
                {"instances": [{"text": t} for t in texts[i * per_request : (i + 1) * per_request]]}
            ).encode()
        }
        for i in range(requests)
    ]
    context.request_processor = [RequestProcessor({"explain": "True"}) for _ in body]
    context.request_ids = {i: str(i) for i in range(requests)}
    handler.handle(body, context)  # warm-up
    barrier.wait(timeout=600)
    t0 = time.perf_counter()
    for _ in range(calls):
        out = handler.handle(body, context)
    assert all(len(o["explanations"]) == per_request for o in out), str(out[0])[:300]
    results.put(time.perf_counter() - t0)


# ----------------------------------------------------------------------------- report


def machine_info(device: str) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), flags=re.M)
        cpu = names[0] if names else cpu
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
            ).stdout.strip()
        )
    except OSError:
        commit, dirty = "", False
    info = {
        "cpu_model": cpu,
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),  # other work on the machine skews timings
        "python": platform.python_version(),
        "device": device,
        "git_commit": commit,
        "git_dirty": dirty,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["tf32"] = {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32}
    return info


def markdown_table(results: list[CaseResult], tutorial_rate: float) -> str:
    head = (
        "| case | engine | method | steps | reviews/call | reviews | reviews/s | p50 ms/call | p99 ms/call "
        "| rel. delta median | rel. delta p90 | mean steps | speedup vs tutorial |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        lines.append(
            f"| {r.name} | {r.engine} | {r.method} | {r.steps} | {r.batch_size} | {r.reviews} | "
            f"{r.reviews_per_s:,.1f} | {r.p50_ms:,.2f} | {r.p99_ms:,.2f} | {r.rel_delta_median:.2e} | "
            f"{r.rel_delta_p90:.2e} | {r.mean_steps_used:.0f} | {r.reviews_per_s / tutorial_rate:,.0f}x |"
        )
    return "\n".join(lines)


def serve_table(rows: list[dict]) -> str:
    lines = [
        "| endpoint | batchSize | maxBatchDelay ms | worker threads | concurrency | requests | errors | requests/s "
        "| p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {r['batchSize']} | {r['maxBatchDelay']} | {r['worker_threads']} | {r['concurrency']} | {r['requests']} | "
            f"{r['errors']} | {r['per_s']:,.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--quick", action="store_true", help="in-process only, 64 reviews, tutorial way on 8 (< 5 min on 2 cores)"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument(
        "--lengths",
        choices=("imdb", "256"),
        default=None,
        help="imdb: real test-set lengths; 256: reviews of 200-300 tokens (default: imdb on cpu, 256 on cuda)",
    )
    p.add_argument("--n", type=int, default=None, help="reviews (default 256 cpu, 4096 cuda, 64 quick)")
    p.add_argument("--batch-size", type=int, default=32, help="reviews per call for the fast engine")
    p.add_argument(
        "--captum-batch-size", type=int, default=None, help="reviews per plain-Captum call (default --batch-size)"
    )
    p.add_argument(
        "--fast-batch-sizes", type=int, nargs="*", default=None, help="several fast-engine batch sizes (cuda: 64..4096)"
    )
    p.add_argument(
        "--tutorial-n", type=int, default=None, help="reviews timed the tutorial's way (default 16, quick 8)"
    )
    p.add_argument(
        "--headline",
        choices=("exact", "steps"),
        default="exact",
        help="engine configuration of the last line: the served default (exact) or fast at --steps",
    )
    p.add_argument(
        "--steps", type=int, default=50, help="steps of plain Captum and the fast engine (Captum's default 50)"
    )
    p.add_argument(
        "--chunk-elements",
        type=int,
        default=None,
        help="fast engine chunk size in floats (default: model-config.yaml's chunk_elements, gpu_chunk_elements on cuda)",
    )
    p.add_argument("--repeat", type=int, default=None, help="timed passes of the fast cases (default 1 cpu, 3 cuda)")
    p.add_argument("--no-serve", action="store_true", help="skip the TorchServe part")
    p.add_argument("--serve-only", action="store_true", help="skip the in-process comparison (TorchServe, --workers)")
    p.add_argument("--threads", type=int, default=0, help="torch threads in-process (0: torch's default)")
    p.add_argument("--requests", type=int, default=256, help="requests per (endpoint, concurrency) through TorchServe")
    p.add_argument("--serve-batch", type=int, nargs="+", default=[1, 8], help="batchSize variants of the .mar")
    p.add_argument("--max-batch-delay", type=int, default=10, help="maxBatchDelay (ms) of the batched variants")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument(
        "--worker-threads",
        type=int,
        default=None,
        help="torch threads of the TorchServe worker (default: as model-config.yaml says; 0: torch's default)",
    )
    p.add_argument(
        "--workers",
        type=int,
        nargs="*",
        default=[],
        help="also run N handler processes on the device, explaining KServe batches (e.g. 1 4 8 16)",
    )
    p.add_argument("--artifacts", default=str(REPO / "model_store" / "artifacts"))
    p.add_argument("--data", default=None, help="IMDB tarball or folder (default: scripts/imdb_data.py lookup)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default bench_results/bench-<device>.json)")
    a = p.parse_args(argv)
    cuda = a.device.startswith("cuda")
    a.lengths = a.lengths or ("256" if cuda else "imdb")
    a.n = a.n or (64 if a.quick else 4096 if cuda else 256)
    a.tutorial_n = min(a.n, a.tutorial_n or (8 if a.quick else 16))
    a.captum_batch_size = a.captum_batch_size or (
        64 if cuda else min(a.batch_size, 64)
    )  # issue: Captum batched, 64 reviews
    served = yaml.safe_load((REPO / "model-config.yaml").read_text())["handler"]["explain"]
    a.chunk_elements = a.chunk_elements or served["gpu_chunk_elements" if cuda else "chunk_elements"]
    a.repeat = a.repeat or (3 if cuda else 1)
    if cuda and a.fast_batch_sizes is None:
        a.fast_batch_sizes = [s for s in (64, 256, 1024, 2048, 4096) if s <= a.n]
    a.serve = not (a.no_serve or a.quick or cuda)
    a.out = Path(a.out or REPO / "bench_results" / f"bench-{a.device.replace(':', '')}.json")
    return a


def compare(results: list[CaseResult], a: argparse.Namespace, arbiter) -> tuple[dict, dict]:
    """Print the in-process table; return (attribution agreement, headline speedups)."""
    by = {r.name: r for r in results}
    tutorial, batched = by["tutorial"], by["captum batched"]
    fast_names = [
        r.name
        for r in results
        if r.name.startswith("fast") and "500" not in r.name and "adaptive" not in r.name and "exact" not in r.name
    ]
    head = max((by[n] for n in fast_names), key=lambda r: r.reviews_per_s)  # fast engine at --steps
    fast500 = by[head.name.replace("fast", "fast 500 steps", 1)]
    agreement = {
        f"fast_vs_captum_batched_{a.steps}_steps": max_rel_diff(head.attributions, batched.attributions),
        "fast_500_vs_tutorial": max_rel_diff(fast500.attributions[: a.tutorial_n], tutorial.attributions),
        "definition": "max over reviews of max|a_fast - a_captum| / max|a_captum|",
        "per_review_vs_captum_batched": arbiter(head, batched),
    }
    exact = by[head.name.replace("fast", "fast exact", 1)]
    headlines = {
        "steps": (head, f"{head.name} ({a.steps} steps, gausslegendre, {head.batch_size} reviews/call)"),
        # The served default. Its cost does not depend on steps, so every step count is "equal
        # steps"; Captum batched is timed at --steps, Captum's default and its cheapest setting.
        "exact": (
            exact,
            f"{exact.name} (the served default, {exact.batch_size} reviews/call) vs Captum batched at {a.steps} steps",
        ),
    }
    chosen, refers_to = headlines[a.headline]
    summary = {
        "speedup_vs_tutorial": chosen.reviews_per_s / tutorial.reviews_per_s,
        "speedup_vs_captum_batched": chosen.reviews_per_s / batched.reviews_per_s,
        "rel_delta_p90": chosen.rel_delta_p90,
        "refers_to": refers_to,
        "fixed_steps": {
            "speedup_vs_tutorial": head.reviews_per_s / tutorial.reviews_per_s,
            "speedup_vs_captum_batched": head.reviews_per_s / batched.reviews_per_s,
            "rel_delta_p90": head.rel_delta_p90,
            "steps": a.steps,
        },
    }

    print()
    print(markdown_table(results, tutorial.reviews_per_s))
    print()
    if a.tutorial_n < a.n:
        print(f"The tutorial way was timed on the first {a.tutorial_n} of the {a.n} reviews (one review per call).")
    print(
        f"Max relative difference of attributions (max|fast - captum| / max|captum| per review): "
        f"{agreement[f'fast_vs_captum_batched_{a.steps}_steps']:.1e} vs Captum batched at {a.steps} steps, "
        f"{agreement['fast_500_vs_tutorial']:.1e} vs the tutorial way at 500 steps."
    )
    per = agreement["per_review_vs_captum_batched"]
    print(
        f"Per review vs Captum batched: p50 {per['p50']:.1e}, p99 {per['p99']:.1e}, max {per['max']:.1e}; "
        f"{per['over_1e-5']} of {per['reviews']} reviews differ by more than 1e-5."
    )
    if "arbitrated" in per:
        arb = per["arbitrated"]
        tok = arb["per_token_id"]
        print(
            f"On {arb['reviews']} of them, against Captum in float64: fast (float32) {arb['fast_float32_vs_captum_float64']:.1e}, "
            f"Captum (float32) {arb['captum_float32_vs_captum_float64']:.1e}. Summed per token id (the same whichever copy "
            f"of a repeated window wins a tie): fast vs Captum {tok['fast_float32_vs_captum_float32']:.1e}, fast vs "
            f"Captum float64 {tok['fast_float32_vs_captum_float64']:.1e}, Captum vs Captum float64 "
            f"{tok['captum_float32_vs_captum_float64']:.1e}."
        )
    return agreement, summary


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.device.startswith("cuda"):
        # Explanations must match Captum in float32: TF32 moved attributions by ~3e-3 (handler note).
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    machine = machine_info(a.device)  # before any work of ours: the load average is other people's
    artifacts = Path(a.artifacts)
    model = load_model(artifacts, a.device)
    vocab = Vocab.load(artifacts)
    texts, token_lists = pick_reviews(a.data, a.n, a.seed, a.lengths)
    stats = length_stats(token_lists)
    print(f"# Layer-IG benchmark on {a.device}: {a.n} IMDB test reviews (seed {a.seed}, lengths {a.lengths})")
    print(f"token lengths: {stats}", flush=True)

    results, agreement, summary = [], {}, {}
    for case in [] if a.serve_only else in_process_cases(a):
        res = run_case(model, token_lists, vocab, case, a.device)
        print(
            f"  {res.name:24s} {res.reviews_per_s:12,.1f} reviews/s  p90 rel delta {res.rel_delta_p90:.1e}", flush=True
        )
        results.append(res)
    if results:
        agreement, summary = compare(
            results, a, lambda fast, captum: arbitrate(model, token_lists, vocab, fast, captum, a.steps, a.device)
        )
    serve_rows, handler_rows = [], []
    if a.serve:
        print("\n## Through TorchServe", flush=True)
        serve_rows = serve_bench(
            artifacts, texts, a.serve_batch, a.max_batch_delay, a.concurrency, a.requests, a.worker_threads
        )
        print()
        print(serve_table(serve_rows))
        handler_rows = handler_bench(artifacts, texts, a.serve_batch, a.requests)

    worker_rows = []
    if a.workers:
        print("\n## Handler workers sharing the device (explain, KServe v1 batches of 32 x 64 reviews)", flush=True)
        gpu_id = torch.device(a.device).index or 0 if a.device.startswith("cuda") else None
        worker_rows = workers_bench(artifacts, texts, a.workers, gpu_id)

    report = {
        "command": "python scripts/bench.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine,
        "inputs": {
            "split": "test",
            "seed": a.seed,
            "lengths": a.lengths,
            "min_len": MIN_LEN,
            "max_tokens": MAX_TOKENS,
            "token_lengths": stats,
        },
        "in_process": [{k: v for k, v in asdict(r).items() if k != "attributions"} for r in results],
        "agreement": agreement,
        "summary": summary,
        "serve": serve_rows,
        "handler_in_process": handler_rows,
        "handler_workers": worker_rows,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nJSON: {a.out}")
    if not summary:
        return report
    fixed = summary["fixed_steps"]
    print(
        f"fast engine at {fixed['steps']} gausslegendre steps: {fixed['speedup_vs_tutorial']:.1f}x the tutorial way, "
        f"{fixed['speedup_vs_captum_batched']:.1f}x Captum batched at equal steps, rel_delta_p90={fixed['rel_delta_p90']:.2e}"
    )
    print(f"last line: {summary['refers_to']}")
    print(
        f"speedup_vs_tutorial={summary['speedup_vs_tutorial']:.1f} "
        f"speedup_vs_captum_batched={summary['speedup_vs_captum_batched']:.1f} rel_delta_p90={summary['rel_delta_p90']:.2e}"
    )
    return report


if __name__ == "__main__":
    main()
