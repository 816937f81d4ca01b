"""Accuracy, confusion counts and calibration of saved artifacts on the IMDB test set, a folder or a TSV.

usage: python scripts/evaluate.py [--artifacts model_store/artifacts] [--data PATH] [--limit N]

--data takes the IMDB tarball or an aclImdb folder (its test split is used), or a TSV file of
``label<TAB>text`` lines (label pos/neg or 1/0). Without it, the data is found as in training.
The text pipeline and the temperature are the artifacts' own (model_config.json "text" and
"calibration"); accuracy, ECE (15 bins), NLL and Brier are reported before and after calibration.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from handler.calibration import Calibration, report
from handler.model import SentimentCNN, load_model
from handler.text import TextSettings, Vocab, encode, tokenize
from imdb_training import data as imdb_data

REPO = Path(__file__).resolve().parent.parent


def length_buckets(token_lists: list[list[str]], batch_size: int, rng: random.Random | None) -> list[list[int]]:
    """Batches of similar length (less padding, faster); shuffled pools when training."""
    order = list(range(len(token_lists)))
    if rng is not None:
        rng.shuffle(order)
    pool = batch_size * 50
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: len(token_lists[i]))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    if rng is not None:
        rng.shuffle(batches)
    return batches


@torch.no_grad()
def dataset_logits(
    model: SentimentCNN, token_lists: list[list[str]], vocab: Vocab, text: TextSettings, batch_size: int = 256
) -> torch.Tensor:
    """Logits [N] of a whole tokenized data set, in the input order (length-bucketed batches of
    the model's own forward; serving's ``handler.taps.TapEngine.logits`` takes one encoded batch)."""
    model.eval()
    out = torch.empty(len(token_lists))
    for idx in length_buckets(token_lists, batch_size, None):
        batch = encode([token_lists[i] for i in idx], vocab, text.min_len, text.max_tokens)
        out[idx] = model(batch.ids, batch.lengths)
    return out


def accuracy(logits: torch.Tensor, labels: list[int]) -> float:
    return float(((logits > 0).long() == torch.tensor(labels)).float().mean())


def evaluate(artifacts: Path, split: imdb_data.Split) -> dict:
    model, vocab, text = load_model(artifacts), Vocab.load(artifacts), TextSettings.load(artifacts)
    temperature = Calibration.load(artifacts).temperature
    started = time.time()
    logits = dataset_logits(model, tokenize(split.texts, text.lowercase), vocab, text)
    pred, gold = (logits > 0).long(), torch.tensor(split.labels)
    return {
        "n": len(split.labels),
        "accuracy": accuracy(logits, split.labels),
        "confusion": {  # rows: true label, columns: predicted
            "true_pos_pred_pos": int(((gold == 1) & (pred == 1)).sum()),
            "true_pos_pred_neg": int(((gold == 1) & (pred == 0)).sum()),
            "true_neg_pred_pos": int(((gold == 0) & (pred == 1)).sum()),
            "true_neg_pred_neg": int(((gold == 0) & (pred == 0)).sum()),
        },
        "temperature": temperature,
        "uncalibrated": report(logits, split.labels),
        "calibrated": report(logits, split.labels, temperature),
        "seconds": round(time.time() - started, 1),
    }


def print_result(result: dict) -> None:
    c = result["confusion"]
    print(f"accuracy {result['accuracy']:.4f} on {result['n']} reviews ({result['seconds']}s)")
    print(
        f"{'':>10} pred pos  pred neg\ntrue pos {c['true_pos_pred_pos']:>9} {c['true_pos_pred_neg']:>9}\n"
        f"true neg {c['true_neg_pred_pos']:>9} {c['true_neg_pred_neg']:>9}"
    )
    print(f"{'':>22}{'accuracy':>10}{'ECE':>9}{'NLL':>9}{'Brier':>9}")
    for name, key in (("uncalibrated", "uncalibrated"), (f"T = {result['temperature']:.4f}", "calibrated")):
        r = result[key]
        print(f"{name:>22}{r['accuracy']:>10.4f}{r['ece']:>9.4f}{r['nll']:>9.4f}{r['brier']:>9.4f}")
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", default=str(REPO / "model_store" / "artifacts"))
    p.add_argument("--data", help="IMDB tarball, aclImdb folder or label<TAB>text TSV")
    p.add_argument("--limit", type=int, help="evaluate N evenly spaced reviews only (quick checks)")
    a = p.parse_args(argv)
    if a.data and Path(a.data).suffix in (".tsv", ".txt"):
        split = imdb_data.load_tsv(Path(a.data))
    else:
        split = imdb_data.load(imdb_data.locate(a.data), splits=("test",))["test"]
    if a.limit:  # evenly spaced, so both labels are represented
        keep = range(0, len(split.texts), max(1, len(split.texts) // a.limit))[: a.limit]
        split = imdb_data.Split([split.texts[i] for i in keep], [split.labels[i] for i in keep])
    result = evaluate(Path(a.artifacts), split)
    print_result(result)
    return result


if __name__ == "__main__":
    main()
