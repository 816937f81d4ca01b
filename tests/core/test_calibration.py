"""Temperature scaling: the fit, the metrics, the record with the model, and labels left alone."""

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import SHIPPED, tiny_artifacts

# isort: split
from handler.calibration import (
    MAX_T,
    MIN_T,
    Calibration,
    brier_score,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    report,
)
from handler.inprocess import answer_texts
from handler.model import load_model
from handler.text import TextSettings, Vocab, encode, tokenize
from imdb_training import calibrate
from imdb_training.train import TUTORIAL_SENTENCES


def _synthetic(n: int = 20_000, scale: float = 3.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from sigmoid(true logit); the model reports ``scale`` times the true logit."""
    g = torch.Generator().manual_seed(seed)
    true = torch.randn(n, generator=g, dtype=torch.float64) * 2
    labels = (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(true)).double()
    return true * scale, labels


def test_over_confident_model_gets_a_temperature_above_one_that_improves_ece_and_nll():
    logits, labels = _synthetic(scale=3.0)
    t = fit_temperature(logits, labels)
    assert 2.7 < t < 3.3  # the true over-confidence factor is 3
    before, after = report(logits, labels), report(logits, labels, t)
    assert after["ece"] < before["ece"] / 3 and after["nll"] < before["nll"] and after["brier"] < before["brier"]
    assert after["accuracy"] == before["accuracy"]


def test_under_confident_model_gets_a_temperature_below_one():
    logits, labels = _synthetic(scale=0.5)
    assert 0.45 < fit_temperature(logits, labels) < 0.55


def test_fitted_temperature_minimises_the_nll():
    logits, labels = _synthetic(n=3000, scale=2.0, seed=1)
    t = fit_temperature(logits, labels)
    best = negative_log_likelihood(logits, labels, t)
    assert all(best <= negative_log_likelihood(logits, labels, t * f) for f in (0.9, 0.99, 1.01, 1.1))


def test_separable_and_uninformative_data_stay_within_the_bounds():
    assert fit_temperature(torch.tensor([-2.0, -1.0, 1.0, 2.0]), [0, 0, 1, 1]) == MIN_T
    assert fit_temperature(torch.tensor([-2.0, -1.0, 1.0, 2.0]), [1, 1, 0, 0]) == MAX_T
    with pytest.raises(ValueError):
        fit_temperature(torch.tensor([1.0, 2.0]), [1])


def test_metrics_by_hand():
    probs = torch.tensor([0.9] * 10 + [0.3] * 10, dtype=torch.float64)
    labels = torch.tensor([1] * 9 + [0] + [0] * 10, dtype=torch.float64)
    # bin of confidence 0.9: accuracy 0.9 (calibrated); bin of confidence 0.7: accuracy 1.0 (off by 0.3)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.0 + 0.5 * 0.3)
    assert brier_score(probs, labels) == pytest.approx((9 * 0.01 + 0.81 + 10 * 0.09) / 20)
    logits = torch.log(probs / (1 - probs))
    nll = -(9 * math.log(0.9) + math.log(0.1) + 10 * math.log(0.7)) / 20
    assert negative_log_likelihood(logits, labels) == pytest.approx(nll)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-50, 50, allow_nan=False), min_size=1, max_size=50),
    st.floats(MIN_T, MAX_T),
)
def test_a_temperature_never_moves_a_score_across_one_half(logits, temperature):
    """Labels are the logit's sign; the calibrated score stays on the same side of 0.5 (or on it,
    where |logit / T| is below float resolution)."""
    z = torch.tensor(logits, dtype=torch.float64)
    cal = Calibration(temperature)
    assert ((cal.probability(z) - 0.5) * z >= 0).all()
    assert all((cal.score(v) - 0.5) * v >= 0 for v in logits)
    assert all(
        cal.score(v) == pytest.approx(float(cal.probability(torch.tensor(v, dtype=torch.float64)))) for v in logits
    )


def test_calibration_loads_from_model_config_and_defaults_to_one(tmp_path):
    tiny_artifacts(tmp_path)
    assert Calibration.load(tmp_path).temperature == 1.0
    calibrate.record(tmp_path, calibration={"temperature": 1.5, "fitted_on": "validation"})
    assert Calibration.load(tmp_path).temperature == 1.5
    assert load_model(tmp_path).config.vocab_size > 0  # the network fields are kept
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            Calibration(bad)


def test_calibration_record_is_fitted_on_validation_only():
    val, val_y = _synthetic(n=5000, scale=2.0, seed=2)
    test, test_y = _synthetic(n=5000, scale=0.5, seed=3)  # the test set would ask for T ~ 0.5
    rec = calibrate.calibration_record(val, val_y.tolist(), test, test_y.tolist())
    assert rec["fitted_on"] == "validation" and 1.8 < rec["temperature"] < 2.2
    assert rec["test"]["before"]["accuracy"] == rec["test"]["after"]["accuracy"]


# A fixed sample beside the tutorial's sentences: plain, mixed, negated and near-neutral reviews.
FIXED_SAMPLE = [
    "A masterpiece. The cast is superb and the story moved me to tears.",
    "Two hours of my life I will never get back.",
    "Not bad at all, though the ending drags.",
    "The acting was fine but the plot made no sense whatsoever.",
    "I expected nothing and was pleasantly surprised.",
    "Not good. Not good at all.",
    "It is a movie. It has actors. Some scenes happen.",
    "Brilliant, funny and sad at once; see it.",
    "The worst sequel in the franchise, and that is saying something.",
    "Decent popcorn fare, nothing more.",
]


def test_shipped_calibration_keeps_every_label_of_the_tutorial_and_a_fixed_sample():
    cal, text = Calibration.load(SHIPPED), TextSettings.load(SHIPPED)
    record = json.loads((SHIPPED / "model_config.json").read_text())["calibration"]
    assert record["fitted_on"] == "validation" and cal.temperature == record["temperature"] > 1
    model, vocab = load_model(SHIPPED), Vocab.load(SHIPPED)
    sentences = [s for s, _ in TUTORIAL_SENTENCES] + FIXED_SAMPLE
    batch = encode(tokenize(sentences, text.lowercase), vocab, text.min_len, text.max_tokens)
    with torch.no_grad():
        logits = model(batch.ids, batch.lengths)  # [N]
    labels = ["pos" if z > 0 else "neg" for z in logits.tolist()]
    assert ((cal.probability(logits) - 0.5) * logits > 0).all()  # clear of 0.5: no score changes side
    assert labels[: len(TUTORIAL_SENTENCES)] == [label for _, label in TUTORIAL_SENTENCES]
    served = answer_texts(sentences, SHIPPED, explain=False)
    assert [a["label"] for a in served] == labels
