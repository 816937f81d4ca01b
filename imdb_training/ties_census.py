"""How often the max-pool tie rule changes an explanation, on the IMDB test reviews.

usage: python scripts/ties_census.py [--artifacts model_store/artifacts] [--data PATH] [--limit N]
                                     [--method exact] [--out FILE.json]

Explains every review twice with the fast engine in float64, once with ``ties="split"`` (even
shares, the served default) and once with ``ties="first"`` (``F.max_pool1d``'s rule, the tutorial's),
and reports how many reviews differ and by how much: relative L2 ||first - split|| / ||split|| and
the largest absolute change of one token. A review differs only if some channel's max-pool winner
is a window that occurs more than once (a repeated n-gram) and that channel is active. Float64 makes
anything above 1e-9 relative a real difference, not rounding.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import time
from pathlib import Path

import torch

from handler.attribution import IGSettings, layer_ig
from handler.model import load_model
from handler.taps import TapEngine
from handler.text import TextSettings, Vocab, encode, tokenize
from imdb_training import data as imdb_data

REPO = Path(__file__).resolve().parent.parent
THRESHOLD = 1e-9  # relative L2 above which the rules differ (float64 rounding is ~1e-15)


def test_names(path: Path) -> list[str] | None:
    """The test reviews' file names in ``imdb_data.load``'s order (sorted by name), for a tarball."""
    if not tarfile.is_tarfile(path):
        return None
    with tarfile.open(path, "r:*") as tar:
        return sorted(m.name for m in tar if m.isfile() and imdb_data._MEMBER.search(m.name) and "/test/" in m.name)


def census(artifacts: Path, texts: list[str], method: str, batch: int = 256) -> dict[str, torch.Tensor]:
    """Per review: relative L2 and max absolute change between the two tie rules, and token count."""
    model, vocab, text = load_model(artifacts).double(), Vocab.load(artifacts), TextSettings.load(artifacts)
    taps = TapEngine(model)
    rel, abs_max, n_tokens = [], [], []
    for start in range(0, len(texts), batch):
        tokens = tokenize(texts[start : start + batch], text.lowercase)
        enc = encode(tokens, vocab, text.min_len, text.max_tokens)
        split = layer_ig(model, enc.ids, enc.lengths, IGSettings(method=method, ties="split"), taps=taps).attributions
        first = layer_ig(model, enc.ids, enc.lengths, IGSettings(method=method, ties="first"), taps=taps).attributions
        diff = first - split  # [B, T]
        rel.append(diff.norm(dim=1) / split.norm(dim=1).clamp_min(1e-300))
        abs_max.append(diff.abs().amax(dim=1))
        n_tokens += [min(len(t), text.max_tokens) for t in tokens]
        print(f"\r{start + len(tokens):,} / {len(texts):,} reviews", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return {"rel": torch.cat(rel), "abs": torch.cat(abs_max), "tokens": torch.tensor(n_tokens)}


def summary(result: dict[str, torch.Tensor], names: list[str] | None, seconds: float, method: str) -> dict:
    rel, changed = result["rel"], result["rel"] > THRESHOLD
    worst = int(rel.argmax())
    return {
        "reviews": len(rel),
        "method": method,
        "changed": int(changed.sum()),
        "changed_share": float(changed.float().mean()),
        "rel_l2_median_of_changed": float(rel[changed].median()) if changed.any() else 0.0,
        "rel_l2_max": float(rel.max()),
        "abs_max": float(result["abs"].max()),
        "worst_review": names[worst] if names else worst,
        "worst_review_tokens": int(result["tokens"][worst]),
        "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", type=Path, default=REPO / "model_store" / "artifacts")
    p.add_argument("--data", help="IMDB tarball or aclImdb folder (default: as in training)")
    p.add_argument("--limit", type=int, help="only the first N test reviews")
    p.add_argument("--method", default="exact", help="Layer-IG method (default: exact, the served default)")
    p.add_argument("--out", type=Path, help="also write the summary here as JSON")
    a = p.parse_args(argv)
    path = imdb_data.locate(a.data)
    texts = imdb_data.load(path, splits=("test",))["test"].texts[: a.limit]
    names = test_names(path)
    started = time.perf_counter()
    result = summary(census(a.artifacts, texts, a.method), names, time.perf_counter() - started, a.method)
    print(json.dumps(result, indent=2))
    if a.out:
        a.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
