"""The benchmarks' inputs: IMDB test reviews picked by a seeded shuffle, and their length mix.

usage: python scripts/bench_inputs.py OUT.tsv [--n 4096] [--lengths 256] [--data PATH] [--seed 0]
       (writes the picked reviews as ``label<TAB>text``; scripts/gpu_check.sh carries that file to a
       GPU machine instead of the 80 MB tarball)
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np

from handler.text import TextSettings, tokenize

REPO = Path(__file__).resolve().parent.parent


ARTIFACTS = REPO / "model_store" / "artifacts"
BAND_256 = (200, 300)  # "256-token reviews": real reviews of 200..300 tokens
_WORDS_256 = (120, 320)  # whitespace words of a plausible 200..300-token review (tokenize only these)


def add_common(p: argparse.ArgumentParser) -> None:
    """The options every benchmark shares: which model, which reviews, where the JSON goes."""
    p.add_argument("--artifacts", type=Path, default=ARTIFACTS, help="model directory (default: the shipped model)")
    p.add_argument(
        "--data", default=None, help="IMDB tarball, folder or label<TAB>text TSV (default: imdb_data lookup)"
    )
    p.add_argument("--seed", type=int, default=0, help="shuffle seed of the review sample")
    p.add_argument(
        "--out", type=Path, default=None, help="results JSON (default bench_results/<benchmark>-<device>.json)"
    )


def imdb_test_texts(data: str | None) -> list[str]:
    """The IMDB test split's texts; ``data`` may also be a ``label<TAB>text`` TSV."""
    from imdb_training import data as imdb_data

    if data and str(data).endswith(".tsv"):
        return imdb_data.load_tsv(Path(data)).texts
    return imdb_data.load(imdb_data.locate(data), splits=("test",))["test"].texts


def pick_reviews(data: str | None, n: int, seed: int, lengths: str) -> tuple[list[str], list[list[str]]]:
    """Texts and token lists of ``n`` IMDB test reviews chosen by a seeded shuffle (deterministic).

    ``lengths="imdb"`` keeps the first ``n`` of the shuffle, so lengths follow the test set's own
    distribution (IMDB's real length mix). ``"256"`` keeps, in shuffle order, reviews of 200..300
    tokens; only reviews of a plausible word count are tokenized, not the whole test set.
    """
    texts = imdb_test_texts(data)
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    if lengths == "imdb":
        chosen = [texts[i] for i in order[:n]]
        return chosen, tokenize(chosen)
    return _pick_256(texts, order, n)


def _pick_256(texts: list[str], order: list[int], n: int) -> tuple[list[str], list[list[str]]]:
    """The first ``n`` reviews of ``order`` with 200..300 tokens. Only reviews of a plausible word count
    are tokenized, 512 at a time, and tokenizing stops once ``n`` are kept."""
    lo, hi = BAND_256
    candidates = [i for i in order if _WORDS_256[0] <= len(texts[i].split()) <= _WORDS_256[1]]
    kept: list[tuple[str, list[str]]] = []
    for start in range(0, len(candidates), 512):
        chunk = [texts[i] for i in candidates[start : start + 512]]
        kept += [(text, t) for text, t in zip(chunk, tokenize(chunk)) if lo <= len(t) <= hi]
        if len(kept) >= n:
            return [k[0] for k in kept[:n]], [k[1] for k in kept[:n]]
    raise RuntimeError(f"only {len(kept)} test reviews have {lo}..{hi} tokens; asked for {n}")


def length_stats(token_lists: list[list[str]], text: TextSettings) -> dict:
    """Token-length distribution before truncation, and how many reviews the model truncates."""
    n = np.array([len(t) for t in token_lists])
    q = np.percentile(n, [0, 10, 50, 90, 99, 100])
    return {
        "n": int(n.size),
        "mean": round(float(n.mean()), 1),
        **{name: int(v) for name, v in zip(("min", "p10", "p50", "p90", "p99", "max"), q)},
        f"truncated_at_{text.max_tokens}": int((n > text.max_tokens).sum()),
    }


def inputs_record(token_lists: list[list[str]], text: TextSettings, seed: int, lengths: str) -> dict:
    """The ``inputs`` section of a results file."""
    return {
        "split": "test",
        "seed": seed,
        "lengths": lengths,
        "min_len": text.min_len,
        "max_tokens": text.max_tokens,
        "token_lengths": length_stats(token_lists, text),
    }


def cycle(items: list, n: int) -> list:
    """The first ``n`` items of ``items`` repeated (a fixed request count from a smaller sample)."""
    return (items * (n // len(items) + 1))[:n]


def write_tsv(texts: list[str], path: Path) -> Path:
    """``pos<TAB>text`` lines, whitespace folded so a review is one line (labels are not used)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines("pos\t" + " ".join(t.split()) + "\n" for t in texts)
    return path


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tsv", type=Path)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--lengths", choices=("imdb", "256"), default="256")
    p.add_argument("--data", default=None)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    # 64 spare reviews: folding whitespace could move a review out of 200..300 tokens.
    texts, _ = pick_reviews(a.data, a.n + 64, a.seed, a.lengths)
    path = write_tsv(texts, a.tsv)
    print(f"{path}: {len(texts)} reviews")
    return path


if __name__ == "__main__":
    main()
