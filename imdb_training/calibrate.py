"""Fit the temperature of saved artifacts on training's validation split and record it with them.

usage: python scripts/calibrate.py [--artifacts model_store/artifacts] [--data PATH] [--val-size 2500] [--seed 0]

Redraws the validation split scripts/train.py held out (same --val-size and --seed), fits one
temperature T on it (``handler.calibration.fit_temperature``: the NLL-minimising T), and writes
"calibration" into model_config.json: T, where it was fitted, and accuracy, ECE (15 bins), NLL and
Brier before and after on the validation split and, for the record only, the test split. train.py
runs the same steps after training; this program calibrates artifacts without retraining them.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from handler.calibration import ECE_BINS, MODEL_CONFIG_FILE, fit_temperature, report
from handler.model import load_model
from handler.text import TextSettings, Vocab, tokenize
from imdb_training import data as imdb_data
from imdb_training.evaluate import dataset_logits

REPO = Path(__file__).resolve().parent.parent


def calibration_record(
    val_logits: torch.Tensor,
    val_labels: list[int],
    test_logits: torch.Tensor | None = None,
    test_labels: list[int] | None = None,
) -> dict:
    """The "calibration" entry of model_config.json: T fitted on the validation logits only."""
    temperature = fit_temperature(val_logits, val_labels)
    record = {
        "temperature": round(temperature, 6),
        "fitted_on": "validation",
        "n_fit": len(val_labels),
        "ece_bins": ECE_BINS,
        "validation": {"before": report(val_logits, val_labels), "after": report(val_logits, val_labels, temperature)},
    }
    if test_logits is not None:
        record["test"] = {
            "before": report(test_logits, test_labels),
            "after": report(test_logits, test_labels, temperature),
        }
    return record


def summary(record: dict) -> dict:
    """The flat test figures metrics.json carries (and describe reports) from a calibration record."""
    test = record.get("test")
    if not test:
        return {"temperature": record["temperature"]}
    return {
        "temperature": record["temperature"],
        "test_ece": test["after"]["ece"],
        "test_ece_uncalibrated": test["before"]["ece"],
        "test_nll": test["after"]["nll"],
        "test_nll_uncalibrated": test["before"]["nll"],
        "test_brier": test["after"]["brier"],
        "test_brier_uncalibrated": test["before"]["brier"],
    }


def record(directory: Path, **entries) -> None:
    """Add or replace top-level entries of model_config.json, keeping the rest as it is."""
    path = Path(directory, MODEL_CONFIG_FILE)
    config = json.loads(path.read_text())
    config.update(entries)
    path.write_text(json.dumps(config, indent=2) + "\n")


def main(argv: list[str] | None = None) -> dict:

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", default=str(REPO / "model_store" / "artifacts"))
    p.add_argument("--data", help="IMDB tarball or aclImdb folder (default: found as in training)")
    p.add_argument("--val-size", type=int, default=2500, help="as given to train.py")
    p.add_argument("--seed", type=int, default=0, help="as given to train.py")
    a = p.parse_args(argv)
    artifacts = Path(a.artifacts)
    model, vocab, text = load_model(artifacts), Vocab.load(artifacts), TextSettings.load(artifacts)
    data = imdb_data.load(imdb_data.locate(a.data))
    val_idx, _ = imdb_data.validation_split(len(data["train"].texts), a.val_size, random.Random(a.seed))
    val_tok = tokenize([data["train"].texts[i] for i in val_idx], text.lowercase)
    val_labels = [data["train"].labels[i] for i in val_idx]
    test_logits = dataset_logits(model, tokenize(data["test"].texts, text.lowercase), vocab, text)
    calibration = calibration_record(
        dataset_logits(model, val_tok, vocab, text), val_labels, test_logits, data["test"].labels
    )
    record(artifacts, calibration=calibration)
    metrics_file = artifacts / "metrics.json"
    if metrics_file.exists():  # the shipped model's record, which describe reports
        metrics = json.loads(metrics_file.read_text())
        metrics.update(summary(calibration))
        metrics_file.write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(calibration, indent=2))
    return calibration


if __name__ == "__main__":
    main()
