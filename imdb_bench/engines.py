"""Engine comparison, in-process: the tutorial's way vs batched Captum vs this project's engine.

usage: python scripts/bench_engines.py [--quick] [--device cpu|cuda] [--lengths imdb|256] [--n N]
                                       [--batch-sizes B ...] [--steps 50] [--artifacts DIR] [--data PATH]
                                       [--seed 0] [--out bench_results/engines-<device>.json]

Side by side on the same IMDB test reviews (a seeded sample at IMDB's real lengths, or with
``--lengths 256`` only reviews of 200-300 tokens, the issue's "256-token reviews"):

  tutorial         Captum LayerIntegratedGradients, n_steps=500, Captum's default method
                   (gausslegendre), one review per call: the Captum IMDB tutorial's way
  captum batched   plain Captum, default settings (n_steps=50, gausslegendre), a whole batch per call
  fast             this project's engine at the same steps, at 500 steps, adaptive (rtol 1e-3), and
                   method "exact" (the served default)

Each case reports reviews/s, p50/p99 per-call latency and the relative delta |delta| / |F(x) - F(ref)|
(median, p90); the fast engine's attributions are compared with Captum's at equal steps, and Captum
in float64 arbitrates where they differ by more than 1e-5.

``--quick``: 64 reviews, the tutorial way on the first 8; the last line is
``speedup_vs_tutorial=<x> speedup_vs_captum_batched=<y> rel_delta_p90=<z>`` for the served
configuration (exact, whose cost is the same at any step count) against Captum batched at --steps.
``--device cuda``: float32 with TF32 off, CUDA synchronised around every timed call, 3 timed passes,
the fast engine at 64..4096 reviews per call, 256-token reviews by default.
Torch threads: torch's default; set OMP_NUM_THREADS to change them.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import yaml

from handler.attribution import Attribution, IGSettings, layer_ig
from handler.model import load_model
from handler.text import EncodedBatch, TextSettings, Vocab, encode
from imdb_bench import inputs as bench_inputs
from imdb_bench import record as bench_record

MODEL_CONFIG = bench_inputs.REPO / "model-config.yaml"
WHOLE_BATCH = 10**15  # chunk_elements so large that layer_ig runs the whole batch in one Captum call
ARBITRATE_LIMIT = 16  # reviews re-explained in float64 where the engines differ by more than 1e-5
CUDA_BATCH_SIZES = (64, 256, 1024, 2048, 4096)  # the fast engine's reviews per call on a GPU (those <= --n)


@dataclass
class Inputs:
    """The reviews of one run, tokenized, and what encodes them as the model was trained."""

    token_lists: list[list[str]]
    vocab: Vocab
    text: TextSettings
    device: str

    def batches(self, n: int, size: int) -> list[EncodedBatch]:
        """The first ``n`` reviews in consecutive batches of ``size``, in sample order (no length
        sorting: that is the engine's own business), on the device."""
        lists = self.token_lists[:n]
        return [self.encode(lists[i : i + size]) for i in range(0, n, size)]

    def encode(self, token_lists: list[list[str]]) -> EncodedBatch:
        return encode(token_lists, self.vocab, self.text.min_len, self.text.max_tokens).to(self.device)


@dataclass
class Case:
    name: str
    settings: IGSettings
    batch_size: int
    n_reviews: int  # how many of the sample it runs on (the tutorial way takes a prefix)
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

    def row(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "attributions"}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def steps_label(s: IGSettings) -> str:
    if s.method == "exact":
        return "exact"
    return f"{s.n_steps}..{s.max_steps} (rtol {s.rtol:g})" if s.adaptive else str(s.n_steps)


def warm_up(model, inputs: Inputs, case: Case, batches: list[EncodedBatch]) -> None:
    """Fast engine: one untimed pass over all batches, so every step count adaptive mode reaches
    has its quadrature cached, as in a worker that has served a while (a first Gauss-Legendre rule
    of 1,024 nodes costs ~0.3 s). Captum has no such cache: one short call loads its code paths."""
    warm = batches if case.settings.engine == "fast" else [inputs.encode([t[:64] for t in inputs.token_lists[:2]])]
    for b in warm:
        layer_ig(model, b.ids, b.lengths, case.settings)


def run_case(model, inputs: Inputs, case: Case) -> CaseResult:
    """Time ``layer_ig`` per call (inputs encoded and on the device beforehand)."""
    batches = inputs.batches(case.n_reviews, case.batch_size)
    warm_up(model, inputs, case, batches)
    latencies, rel, steps, attrs = [], [], [], []
    for rep in range(case.repeat):
        for b in batches:
            sync(inputs.device)
            t0 = time.perf_counter()
            out: Attribution = layer_ig(model, b.ids, b.lengths, case.settings)
            sync(inputs.device)
            latencies.append(time.perf_counter() - t0)
            if rep == 0:
                rel += out.relative_delta().cpu().tolist()
                steps += out.n_steps.float().cpu().tolist()
                attrs += [out.attributions[j, : int(b.lengths[j])].cpu() for j in range(len(b.lengths))]
    lat, r, s = np.array(latencies), np.array(rel), case.settings
    return CaseResult(
        case.name,
        s.engine,
        s.method,
        steps_label(s),
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


def per_token(ids: list[torch.Tensor], attr: list[torch.Tensor]) -> list[torch.Tensor]:
    """Attributions summed per token id: the same whichever copy of a repeated window wins a tie."""
    return [torch.zeros(int(i.max()) + 1, dtype=torch.float64).index_add_(0, i, a.double()) for i, a in zip(ids, attr)]


def arbitrate(model, inputs: Inputs, fast: CaseResult, captum: CaseResult, steps: int) -> dict:
    """How the fast engine and Captum (both float32, equal steps) agree review by review, and who is
    right where they differ by more than 1e-5: Captum in float64 decides, on up to ARBITRATE_LIMIT
    of those reviews, also summed per token id (which does not depend on max-pool ties)."""
    per_review = np.array([max_rel_diff([x], [y]) for x, y in zip(fast.attributions, captum.attributions)])
    report = {
        "reviews": len(per_review),
        "p50": float(np.median(per_review)),
        "p99": float(np.percentile(per_review, 99)),
        "max": float(per_review.max()),
        "over_1e-5": int((per_review > 1e-5).sum()),
    }
    worst = [int(i) for i in np.argsort(-per_review)[:ARBITRATE_LIMIT] if per_review[i] > 1e-5]
    if not worst:
        return report
    double = type(model)(model.config).double().to(inputs.device).eval()
    double.load_state_dict(model.state_dict())
    batch = inputs.encode([inputs.token_lists[i] for i in worst])
    exact64 = IGSettings(engine="captum", method="gausslegendre", n_steps=steps, chunk_elements=WHOLE_BATCH)
    truth = layer_ig(double, batch.ids, batch.lengths, exact64).attributions
    truth = [truth[j, : int(n)].cpu() for j, n in enumerate(batch.lengths)]
    ids = [batch.ids[j, : int(n)].cpu() for j, n in enumerate(batch.lengths)]
    fast_w, captum_w = [fast.attributions[i].double() for i in worst], [captum.attributions[i].double() for i in worst]
    report["arbitrated"] = {
        "reviews": len(worst),
        "fast_float32_vs_captum_float64": max_rel_diff(fast_w, truth),
        "captum_float32_vs_captum_float64": max_rel_diff(captum_w, truth),
        "per_token_id": {
            "fast_float32_vs_captum_float32": max_rel_diff(per_token(ids, fast_w), per_token(ids, captum_w)),
            "fast_float32_vs_captum_float64": max_rel_diff(per_token(ids, fast_w), per_token(ids, truth)),
            "captum_float32_vs_captum_float64": max_rel_diff(per_token(ids, captum_w), per_token(ids, truth)),
        },
    }
    return report


def cases(a: argparse.Namespace) -> list[Case]:
    gl = IGSettings(engine="fast", method="gausslegendre", n_steps=a.steps, chunk_elements=a.chunk_elements)
    captum = IGSettings(engine="captum", method="gausslegendre", n_steps=a.steps, chunk_elements=WHOLE_BATCH)
    out = [
        Case("tutorial", IGSettings(engine="captum", method="gausslegendre", n_steps=500), 1, a.tutorial_n),
        Case("captum batched", captum, a.captum_batch_size, a.n),
    ]
    for size in a.batch_sizes:
        suffix = "" if len(a.batch_sizes) == 1 else f" B={size}"
        out += [
            Case(f"fast{suffix}", gl, size, a.n, a.repeat),
            Case(f"fast 500 steps{suffix}", replace(gl, n_steps=500), size, a.n, a.repeat),
            Case(f"fast adaptive{suffix}", replace(gl, adaptive=True, rtol=1e-3), size, a.n, a.repeat),
            Case(f"fast exact{suffix}", replace(gl, method="exact"), size, a.n, a.repeat),
        ]
    return out


def summarize(results: list[CaseResult], steps: int) -> tuple[CaseResult, CaseResult, dict]:
    """(fast engine at ``steps``, Captum batched, headline speedups). The headline is the served
    default, exact, whose cost does not depend on steps, so every step count is "equal steps";
    Captum batched is timed at ``steps``, Captum's default and its cheapest setting."""
    by = {r.name: r for r in results}
    tutorial, batched = by["tutorial"], by["captum batched"]
    fixed = [r for r in results if r.name == "fast" or r.name.startswith("fast B=")]
    head = max(fixed, key=lambda r: r.reviews_per_s)
    exact = by[head.name.replace("fast", "fast exact", 1)]
    summary = {
        "speedup_vs_tutorial": exact.reviews_per_s / tutorial.reviews_per_s,
        "speedup_vs_captum_batched": exact.reviews_per_s / batched.reviews_per_s,
        "rel_delta_p90": exact.rel_delta_p90,
        "refers_to": f"{exact.name} (the served default, {exact.batch_size} reviews/call) vs Captum batched at {steps} steps",
        "fixed_steps": {
            "speedup_vs_tutorial": head.reviews_per_s / tutorial.reviews_per_s,
            "speedup_vs_captum_batched": head.reviews_per_s / batched.reviews_per_s,
            "rel_delta_p90": head.rel_delta_p90,
            "steps": steps,
        },
    }
    return head, batched, summary


COLUMNS = {
    "name": "case",
    "engine": "engine",
    "method": "method",
    "steps": "steps",
    "batch_size": "reviews/call",
    "reviews": "reviews",
    "reviews_per_s": "reviews/s",
    "p50_ms": "p50 ms/call",
    "p99_ms": "p99 ms/call",
    "rel_delta_median": "rel. delta median",
    "rel_delta_p90": "rel. delta p90",
    "mean_steps_used": "mean steps",
    "speedup": "speedup vs tutorial",
}


def print_report(results: list[CaseResult], agreement: dict, summary: dict, a: argparse.Namespace) -> None:
    tutorial_rate = results[0].reviews_per_s
    deltas = ("rel_delta_median", "rel_delta_p90")
    rows = [
        {
            **r.row(),
            **{k: f"{getattr(r, k):.2e}" for k in deltas},
            "speedup": f"{r.reviews_per_s / tutorial_rate:,.0f}x",
        }
        for r in results
    ]
    print("\n" + bench_record.markdown(rows, COLUMNS) + "\n")
    if a.tutorial_n < a.n:
        print(f"The tutorial way was timed on the first {a.tutorial_n} of the {a.n} reviews (one review per call).")
    per = agreement["per_review_vs_captum_batched"]
    print(
        f"Attributions, max|fast - captum| / max|captum| per review: {agreement['fast_vs_captum_batched']:.1e} vs "
        f"Captum batched at {a.steps} steps, {agreement['fast_500_vs_tutorial']:.1e} vs the tutorial way; per review "
        f"p50 {per['p50']:.1e}, p99 {per['p99']:.1e}; {per['over_1e-5']} of {per['reviews']} differ by more than 1e-5."
    )
    if "arbitrated" in per:
        arb = per["arbitrated"]
        print(
            f"On {arb['reviews']} of them, against Captum in float64: fast (float32) "
            f"{arb['fast_float32_vs_captum_float64']:.1e}, Captum (float32) {arb['captum_float32_vs_captum_float64']:.1e}."
        )
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


def parser() -> argparse.ArgumentParser:
    """The options; those left at None get defaults by device in ``parse_args``, which sees the device."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="64 reviews, the tutorial way on 8 (about 1 min on 2 cores)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--lengths", choices=("imdb", "256"), default=None, help="default: imdb on cpu, 256 on cuda")
    p.add_argument("--n", type=int, default=None, help="reviews (default 256 cpu, 4096 cuda, 64 quick)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="fast engine reviews/call (cpu: 32)")
    p.add_argument("--steps", type=int, default=50, help="steps of plain Captum and the fast engine (Captum's 50)")
    bench_inputs.add_common(p)
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, with the defaults that depend on the device (and on ``--quick``) filled in."""
    a = parser().parse_args(argv)
    cuda = a.device.startswith("cuda")
    _default_sample(a, cuda)
    _default_batches(a, cuda)
    served = yaml.safe_load(MODEL_CONFIG.read_text())["handler"]["explain"]
    a.chunk_elements = served["gpu_chunk_elements" if cuda else "chunk_elements"]
    a.repeat = 3 if cuda else 1
    a.out = a.out or bench_record.default_path("engines", a.device)
    return a


def _default_sample(a: argparse.Namespace, cuda: bool) -> None:
    """Which reviews and how many: a GPU gets the issue's 256-token reviews and enough of them to
    fill its largest batch; the tutorial's one-review-at-a-time way runs on a few only (it is slow)."""
    a.lengths = a.lengths or ("256" if cuda else "imdb")
    a.n = a.n or (64 if a.quick else 4096 if cuda else 256)
    a.tutorial_n = min(a.n, 8 if a.quick else 16)


def _default_batches(a: argparse.Namespace, cuda: bool) -> None:
    """Reviews per call: on a GPU the fast engine sweeps sizes up to ``--n``, on CPU one size (32);
    Captum batched takes 64 (the issue's figure), on CPU the first fast-engine size where smaller."""
    a.batch_sizes = a.batch_sizes or ([s for s in CUDA_BATCH_SIZES if s <= a.n] if cuda else [32])
    a.captum_batch_size = 64 if cuda else min(a.batch_sizes[0], 64)


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    if a.device.startswith("cuda"):
        # Explanations must match Captum in float32: TF32 moved attributions by ~3e-3 (handler note).
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    machine = bench_record.machine_info(a.device)  # before any work of ours
    model = load_model(a.artifacts, a.device)
    text = TextSettings.load(a.artifacts)
    _, token_lists = bench_inputs.pick_reviews(a.data, a.n, a.seed, a.lengths)
    inputs = Inputs(token_lists, Vocab.load(a.artifacts), text, a.device)
    record = bench_inputs.inputs_record(token_lists, text, a.seed, a.lengths)
    print(f"# engines on {a.device}: {a.n} IMDB test reviews (seed {a.seed}, lengths {a.lengths})")
    print(f"token lengths: {record['token_lengths']}", flush=True)
    results = []
    for case in cases(a):
        results.append(run_case(model, inputs, case))
        r = results[-1]
        print(f"  {r.name:24s} {r.reviews_per_s:12,.1f} reviews/s  p90 rel delta {r.rel_delta_p90:.1e}", flush=True)
    head, batched, summary = summarize(results, a.steps)
    fast500 = next(r for r in results if r.name == head.name.replace("fast", "fast 500 steps", 1))
    agreement = {
        "fast_vs_captum_batched": max_rel_diff(head.attributions, batched.attributions),
        "fast_500_vs_tutorial": max_rel_diff(fast500.attributions[: a.tutorial_n], results[0].attributions),
        "steps": a.steps,
        "definition": "max over reviews of max|a_fast - a_captum| / max|a_captum|",
        "per_review_vs_captum_batched": arbitrate(model, inputs, head, batched, a.steps),
    }
    path = bench_record.write(
        a.out,
        "engines",
        bench_record.command_line(argv, "scripts/bench_engines.py"),
        machine,
        record,
        in_process=[r.row() for r in results],
        agreement=agreement,
        summary=summary,
    )
    print(f"\nJSON: {path}")
    print_report(results, agreement, summary, a)
    return bench_record.load(path)


if __name__ == "__main__":
    main()
