"""Temperature scaling of the sentiment logit, and the calibration metrics (ECE, NLL, Brier).

Training fits one temperature T on the validation split (``fit_temperature``) and records it in
``model_config.json`` under ``"calibration"``; serving reports ``score = sigmoid(logit / T)``.
T > 0 only rescales the logit, so no label changes: the label is the logit's sign, and the score
stays on the same side of 0.5. The attributions keep the raw logit as their target. Evaluation, training and serving share this module.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

MODEL_CONFIG_FILE = "model_config.json"
ECE_BINS = 15  # Guo et al. (2017), "On Calibration of Modern Neural Networks"
# The fit searches 1/T in [1/MAX_T, 1/MIN_T]: a separable validation set (a toy run) would
# otherwise push T to 0, and a constant model to infinity.
MIN_T, MAX_T = 0.01, 100.0


@dataclass(frozen=True)
class Calibration:
    """The temperature a model's scores are divided by; 1.0 (none) for artifacts without one."""

    temperature: float = 1.0

    def __post_init__(self):
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"calibration temperature must be a positive number, got {self.temperature!r}")

    @classmethod
    def load(cls, directory: Path) -> Calibration:
        """``calibration.temperature`` of ``model_config.json``; ``Calibration()`` when absent."""
        path = Path(directory, MODEL_CONFIG_FILE)
        record = json.loads(path.read_text()).get("calibration") if path.exists() else None
        return cls(float(record["temperature"])) if record else cls()

    def probability(self, logits: torch.Tensor) -> torch.Tensor:
        """P(positive) = sigmoid(logit / T), same shape as ``logits``."""
        return torch.sigmoid(logits / self.temperature)

    def score(self, logit: float) -> float:
        """P(positive) = sigmoid(logit / T) of one logit, for an answer's ``score``."""
        z = logit / self.temperature
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def _nll_slope(logits: torch.Tensor, labels: torch.Tensor, beta: float) -> float:
    """d/d(beta) of the mean NLL of sigmoid(beta * logit); increasing in beta (the NLL is convex)."""
    return float(((torch.sigmoid(beta * logits) - labels) * logits).mean())


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor | list[int], iterations: int = 100) -> float:
    """The T in [MIN_T, MAX_T] that minimises the NLL of sigmoid(logit / T) on (logits, labels).

    The NLL is convex in beta = 1/T, so its slope crosses zero once: bisection on log(beta) finds
    it without a step size or an optimiser's state, and gives the same T on every machine.
    """
    z = logits.detach().double().flatten()  # [N]
    y = torch.as_tensor(labels, dtype=torch.float64).flatten()  # [N]
    if z.numel() == 0 or z.shape != y.shape:
        raise ValueError(f"need as many labels as logits (>0), got {y.numel()} and {z.numel()}")
    lo, hi = math.log(1 / MAX_T), math.log(1 / MIN_T)
    if _nll_slope(z, y, math.exp(lo)) >= 0:
        return MAX_T
    if _nll_slope(z, y, math.exp(hi)) <= 0:
        return MIN_T
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _nll_slope(z, y, math.exp(mid)) < 0 else (lo, mid)
    return 1 / math.exp((lo + hi) / 2)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor | list[int], n_bins: int = ECE_BINS) -> float:
    """Confidence ECE: predictions binned by confidence max(p, 1 - p) into ``n_bins`` equal-width
    bins of [0, 1]; the bins' |accuracy - mean confidence|, weighted by their share of predictions."""
    p = probs.detach().double().flatten()  # [N] P(positive)
    y = torch.as_tensor(labels, dtype=torch.float64).flatten()  # [N]
    confidence = torch.maximum(p, 1 - p)
    correct = ((p > 0.5).double() == y).double()
    bins = torch.clamp((confidence * n_bins).long(), max=n_bins - 1)  # bin b holds (b/n, (b+1)/n]
    ece = torch.zeros((), dtype=torch.float64)
    for b in bins.unique():
        inside = bins == b
        ece += inside.double().mean() * (correct[inside].mean() - confidence[inside].mean()).abs()
    return float(ece)


def negative_log_likelihood(logits: torch.Tensor, labels: torch.Tensor | list[int], temperature: float = 1.0) -> float:
    """Mean binary cross-entropy of sigmoid(logit / T), computed from the logits (no log(0))."""
    y = torch.as_tensor(labels, dtype=torch.float64).flatten()
    return float(F.binary_cross_entropy_with_logits(logits.detach().double().flatten() / temperature, y))


def brier_score(probs: torch.Tensor, labels: torch.Tensor | list[int]) -> float:
    """Mean squared error of P(positive) against the 0/1 label."""
    y = torch.as_tensor(labels, dtype=torch.float64).flatten()
    return float(((probs.detach().double().flatten() - y) ** 2).mean())


def report(logits: torch.Tensor, labels: torch.Tensor | list[int], temperature: float = 1.0) -> dict:
    """Accuracy, ECE (15 bins), NLL and Brier of sigmoid(logit / T)."""
    probs = Calibration(temperature).probability(logits.detach().double())
    y = torch.as_tensor(labels, dtype=torch.float64).flatten()
    return {
        "accuracy": float(((logits.detach().flatten() > 0).double() == y).double().mean()),  # label: the sign
        "ece": expected_calibration_error(probs, y),
        "nll": negative_log_likelihood(logits, y, temperature),
        "brier": brier_score(probs, y),
    }
