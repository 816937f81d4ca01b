"""Where the device time goes in the served configuration (exact): reviews per call, chunk budget,
peak memory and a profile.

usage: python scripts/gpu_profile.py [--device cuda] [--reviews .whl/reviews-256.tsv] [--artifacts DIR]
                                     [--plan 1024:29 2048:28 2048:29 4096:29 4096:30] [--calls 10]

Each ``ROWS:LOG2`` of the plan times ``--calls`` calls of the engine on the first ROWS reviews with
``chunk_elements`` = 2^LOG2, after one untimed call, synchronised; then 3 calls at the plan's middle
entry run under torch.profiler (CUDA activity on a GPU). The whole handler (spaCy included) is
``bench_workers.py``. On the CPU it runs the same code on any small plan (the tests do).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from handler.attribution import IGSettings, layer_ig
from handler.model import load_model
from handler.text import EncodedBatch, TextSettings, Vocab, encode, tokenize

ARTIFACTS = Path(__file__).resolve().parent.parent / "model_store" / "artifacts"
PLAN = ("1024:29", "2048:28", "2048:29", "4096:29", "4096:30")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def rate(model, batch: EncodedBatch, rows: int, chunk: int, device: str, calls: int) -> tuple[float, float]:
    """(reviews/s, peak device memory in GiB, 0 on the CPU) of the exact engine on ``rows`` reviews."""
    if rows > len(batch.lengths):
        raise ValueError(f"the plan asks for {rows} reviews per call; the reviews file has {len(batch.lengths)}")
    ids, lengths = batch.ids[:rows], batch.lengths[:rows]  # [rows, T], [rows]
    settings = IGSettings(method="exact", chunk_elements=chunk)
    layer_ig(model, ids, lengths, settings)
    sync(device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(calls):
        layer_ig(model, ids, lengths, settings)
    sync(device)
    elapsed = time.perf_counter() - t0
    return calls * rows / elapsed, (torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0)


def parse_plan(plan: list[str]) -> list[tuple[int, int]]:
    """``ROWS:LOG2`` -> (rows, chunk_elements)."""
    out = []
    for entry in plan:
        rows, _, log2 = entry.partition(":")
        out.append((int(rows), 2 ** int(log2)))
    return out


def profile_table(model, batch: EncodedBatch, rows: int, chunk: int, device: str) -> str:
    cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    settings = IGSettings(method="exact", chunk_elements=chunk)
    with profile(activities=activities) as prof:
        for _ in range(3):
            layer_ig(model, batch.ids[:rows], batch.lengths[:rows], settings)
        sync(device)
    return prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=12)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--reviews", type=Path, default=Path(".whl/reviews-256.tsv"), help="label<TAB>text lines")
    p.add_argument("--artifacts", type=Path, default=ARTIFACTS)
    p.add_argument("--plan", nargs="+", default=list(PLAN), help="ROWS:LOG2_CHUNK_ELEMENTS entries")
    p.add_argument("--calls", type=int, default=10)
    a = p.parse_args(argv)
    if a.device.startswith("cuda"):
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    plan = parse_plan(a.plan)
    model, vocab, text = load_model(a.artifacts, a.device), Vocab.load(a.artifacts), TextSettings.load(a.artifacts)
    lines = a.reviews.read_text(encoding="utf-8").splitlines()[: max(r for r, _ in plan)]
    tokens = tokenize([line.split("\t", 1)[1] for line in lines], text.lowercase)
    batch = encode(tokens, vocab, text.min_len, text.max_tokens).to(a.device)
    rows_out = []
    for rows, chunk in plan:
        per_s, peak = rate(model, batch, rows, chunk, a.device, a.calls)
        rows_out.append({"rows": rows, "chunk_elements": chunk, "reviews_per_s": per_s, "peak_gib": peak})
        print(
            f"exact, {rows} reviews/call, chunk_elements 2^{chunk.bit_length() - 1}: {per_s:,.0f} reviews/s, "
            f"peak device memory {peak:.2f} GiB",
            flush=True,
        )
    print(profile_table(model, batch, *plan[len(plan) // 2], a.device))
    return rows_out


if __name__ == "__main__":
    main()
