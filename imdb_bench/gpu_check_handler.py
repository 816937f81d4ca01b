"""The real handler in-process on a device and on the CPU: the same answers within 1e-5 relative.

usage: python scripts/gpu_check_handler.py [--device cuda] [--reviews .whl/reviews-256.tsv] [--artifacts DIR]

Each side is a handler loaded as a TorchServe worker would be (handler/inprocess.py: a real
ts Context with gpu_id, a RequestProcessor per row with the header explain "True" or "False"). It
answers 12 long reviews from the TSV and 4 short sentences (7..300 tokens), explained and not. Labels,
tokens and engine must be equal; logits and attributions may differ by float rounding only: at most
``--tolerance`` relative (logits to their size, attributions to the review's largest). On CPU
hardware ``--device cpu`` runs the same comparison (the tests do, on a tiny model).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from handler.inprocess import answer, local_handler

ARTIFACTS = Path(__file__).resolve().parent.parent / "model_store" / "artifacts"
SHORT = ["A fine film.", "Dull.", "It was a fantastic performance !", "terrible , just terrible"]


def answers(artifacts: Path, texts: list[str], gpu_id: int | None, explain: bool) -> tuple[str, list[dict]]:
    """(the handler's device, its answers) with every text in one batch."""
    handler, context = local_handler(artifacts, batch_size=len(texts), gpu_id=gpu_id)
    return str(handler.core.device), answer(handler, context, texts, explain)


def worst_difference(device: list[dict], cpu: list[dict]) -> float:
    """Largest relative difference of logits and attributions; raises on any discrete mismatch."""
    worst = 0.0
    for d, c in zip(device, cpu, strict=True):
        if d["label"] != c["label"]:
            raise AssertionError(f"labels differ: {d['label']} vs {c['label']} (logits {d['logit']}, {c['logit']})")
        worst = max(worst, abs(d["logit"] - c["logit"]) / max(abs(c["logit"]), 1e-3))
        if "attributions" not in c:
            continue
        if d["tokens"] != c["tokens"] or d["engine"] != c["engine"]:
            raise AssertionError("tokens or engine differ between the device and the CPU")
        scale = max(max(abs(a) for a in c["attributions"]), 1e-12)
        worst = max(worst, max(abs(a - b) for a, b in zip(d["attributions"], c["attributions"])) / scale)
    return worst


def gpu_index(device: str) -> int | None:
    import torch

    if not device.startswith("cuda"):
        return None
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    return torch.device(device).index or 0


def check(artifacts: Path, texts: list[str], device: str, tolerance: float) -> float:
    gpu_id = gpu_index(device)
    expected = f"cuda:{gpu_id}" if gpu_id is not None else "cpu"
    worst = 0.0
    for explain in (False, True):
        dev, on_device = answers(artifacts, texts, gpu_id, explain)
        cpu_dev, on_cpu = answers(artifacts, texts, None, explain)
        if (dev, cpu_dev) != (expected, "cpu"):
            raise AssertionError(f"handlers ran on {dev} and {cpu_dev}, not {expected} and cpu")
        worst = max(worst, worst_difference(on_device, on_cpu))
        print(
            f"handler explain={explain}: {len(on_device)} answers on {dev} vs cpu; worst relative difference so far {worst:.2e}"
        )
    print(f"{device} vs CPU worst relative difference (logits, attributions): {worst:.2e}")
    if worst > tolerance:
        raise AssertionError(f"{device} results differ from CPU by {worst:.2e} > {tolerance:g}")
    return worst


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda[:i], or cpu (the comparison itself, on any machine)")
    p.add_argument("--reviews", type=Path, default=Path(".whl/reviews-256.tsv"), help="label<TAB>text lines")
    p.add_argument("--artifacts", type=Path, default=ARTIFACTS)
    p.add_argument("--tolerance", type=float, default=1e-5)
    a = p.parse_args(argv)
    lines = a.reviews.read_text(encoding="utf-8").splitlines()[:12]
    texts = [line.split("\t", 1)[1] for line in lines] + SHORT
    return check(a.artifacts, texts, a.device, a.tolerance)


if __name__ == "__main__":
    main()
