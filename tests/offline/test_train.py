"""A tiny end-to-end training run writes artifacts that serving and evaluation can load."""

import json
import random
from pathlib import Path

import pytest
import torch

from handler.calibration import Calibration
from handler.inprocess import answer_texts
from handler.model import load_model
from handler.text import TextSettings, Vocab
from imdb_training import calibrate, evaluate, train
from imdb_training import data as imdb_data

POS = "great fantastic wonderful loved best superb".split()
NEG = "awful horrible bad worst boring terrible".split()
FILLER = "the movie was a film i it and plot acting".split()


@pytest.fixture(scope="module")
def tiny_imdb(tmp_path_factory):
    """A few dozen reviews in the aclImdb layout, with the IMDB markup (<br />) included."""
    rng = random.Random(0)
    root = tmp_path_factory.mktemp("data") / "aclImdb"
    for split in ("train", "test"):
        for label, words in (("pos", POS), ("neg", NEG)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for k in range(16):
                text = " ".join(rng.choice(FILLER + words) for _ in range(rng.randint(3, 30)))
                (folder / f"{k}_7.txt").write_text(text + "<br /><br />The end.")
    (root / "train" / "unsup").mkdir()
    (root / "train" / "unsup" / "0_0.txt").write_text("a great film and a bad plot")
    return root


def test_tiny_training_run_writes_loadable_artifacts(tiny_imdb, tmp_path):
    out = tmp_path / "artifacts"
    args = train.parse_args(
        [
            "--data",
            str(tiny_imdb),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--val-size",
            "4",
            "--vocab-size",
            "60",
            "--batch-size",
            "8",
            "--threads",
            "1",
        ]
    )
    metrics = train.train(args)
    assert_the_artifacts_load_and_count_the_splits(out, metrics)
    assert_the_recorded_labels_and_settings_are_served(out, metrics)
    assert_evaluation_repeats_the_test_metrics(out, tiny_imdb, metrics)


def assert_the_artifacts_load_and_count_the_splits(out: Path, metrics: dict) -> None:
    assert sorted(p.name for p in out.iterdir()) == [
        "metrics.json",
        "model_config.json",
        "vocab.json",
        "weights.safetensors",
    ]
    model, vocab = load_model(out), Vocab.load(out)
    assert model.embedding.num_embeddings == len(vocab) <= 60
    assert json.loads((out / "metrics.json").read_text())["n_test"] == 32 == metrics["n_test"]
    assert metrics["n_train"] == 28 and metrics["n_val"] == 4


def assert_the_recorded_labels_and_settings_are_served(out: Path, metrics: dict) -> None:
    # The recorded tutorial labels are what the saved artifacts answer when served.
    served = answer_texts([s for s, _ in train.TUTORIAL_SENTENCES], out, explain=False)
    assert metrics["tutorial_sentences"] == {s: a["label"] for (s, _), a in zip(train.TUTORIAL_SENTENCES, served)}
    config = json.loads((out / "model_config.json").read_text())
    assert config["text"] == TextSettings().as_dict() == TextSettings.load(out).as_dict()
    assert config["calibration"]["fitted_on"] == "validation" and config["calibration"]["n_fit"] == 4
    assert metrics["temperature"] == Calibration.load(out).temperature == config["calibration"]["temperature"]


def assert_evaluation_repeats_the_test_metrics(out: Path, data: Path, metrics: dict) -> None:
    test_split = imdb_data.load(data, splits=("test",))["test"]
    result = evaluate.evaluate(out, test_split)
    assert result["n"] == 32 and sum(result["confusion"].values()) == 32
    assert result["accuracy"] == metrics["test_accuracy"] == result["calibrated"]["accuracy"]
    assert result["calibrated"]["nll"] == pytest.approx(metrics["test_nll"])
    # Evaluation reads the text pipeline recorded with the weights, not options of its own.
    calibrate.record(out, text={"min_len": 7, "max_tokens": 7, "lowercase": True})
    assert evaluate.evaluate(out, test_split)["uncalibrated"]["nll"] != result["uncalibrated"]["nll"]


def test_training_is_reproducible_with_a_fixed_seed(tiny_imdb, tmp_path):
    runs = []
    for name in ("a", "b"):
        args = train.parse_args(
            [
                "--data",
                str(tiny_imdb),
                "--out",
                str(tmp_path / name),
                "--epochs",
                "1",
                "--val-size",
                "4",
                "--vocab-size",
                "60",
                "--threads",
                "1",
            ]
        )
        train.train(args)
        runs.append(load_model(tmp_path / name).state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_ppmi_vectors_place_co_occurring_words_together():
    docs = [
        ["good", "great", "film"],
        ["great", "good", "show"],
        ["bad", "awful", "plot"],
        ["awful", "bad", "acting"],
    ] * 20
    vocab = Vocab.build(docs, max_size=50)
    vectors = train.ppmi_svd_vectors(docs, vocab, dim=4, window=2)
    cos = torch.nn.functional.cosine_similarity
    v = {w: vectors[vocab.stoi[w]] for w in ("good", "great", "bad", "awful")}
    assert cos(v["good"], v["great"], dim=0) > cos(v["good"], v["awful"], dim=0)
    assert vectors[:2].abs().sum() == 0  # <unk>, <pad> start at zero


def test_data_is_found_from_argument_then_environment(tiny_imdb, monkeypatch):
    assert imdb_data.locate(str(tiny_imdb)) == tiny_imdb
    monkeypatch.setenv(imdb_data.ENV_VAR, str(tiny_imdb))
    assert imdb_data.locate() == tiny_imdb
    monkeypatch.setenv(imdb_data.ENV_VAR, "/nonexistent/imdb.tar.gz")
    with pytest.raises(FileNotFoundError):
        imdb_data.locate()


def test_tsv_evaluation_data(tmp_path):
    tsv = tmp_path / "reviews.tsv"
    tsv.write_text("pos\tLoved it\nneg\tAwful\t(tab inside)\n1\tGreat\n0\tBad\n")
    split = imdb_data.load_tsv(tsv)
    assert split.labels == [1, 0, 1, 0] and split.texts[1] == "Awful\t(tab inside)"
