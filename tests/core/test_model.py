"""The CNN, the tutorial's forward of it, the tap-table engine, pickle-free artifacts, and the shipped model."""

import json
import pickle
import struct

import pytest
import torch

from handler.attribution import IGSettings, layer_ig
from handler.model import (
    WEIGHTS_FILE,
    ModelConfig,
    SentimentCNN,
    TutorialCNN,
    load_model,
)
from handler.taps import StaleTablesError, TapEngine, attach, engine_for
from handler.text import Vocab, encode, tokenize
from imdb_training.train import TUTORIAL_SENTENCES
from tests.helpers import SHIPPED, tiny_artifacts

TUTORIAL = TUTORIAL_SENTENCES  # the Captum tutorial's sentences and labels, as training reports them


def test_forward_gives_one_logit_per_review():
    model = SentimentCNN(ModelConfig(vocab_size=50)).eval()
    ids = torch.randint(0, 50, (4, 11))
    assert model(ids).shape == (4,)
    assert model(ids, torch.tensor([11, 9, 7, 8])).shape == (4,)


def test_architecture_follows_the_tutorial():
    model = SentimentCNN(ModelConfig(vocab_size=50))
    assert model.embedding.embedding_dim == 100 and model.embedding.padding_idx == 1
    assert [c.kernel_size for c in model.convs] == [(3, 100), (4, 100), (5, 100)]
    assert all(c.out_channels == 100 and c.in_channels == 1 for c in model.convs)
    assert model.fc.in_features == 300 and model.fc.out_features == 1 and model.dropout.p == 0.5


def test_logit_does_not_depend_on_batch_padding():
    torch.manual_seed(0)
    model = SentimentCNN(ModelConfig(vocab_size=50)).eval()
    with torch.no_grad():
        model.convs[0].bias.fill_(3.0)  # ReLU(bias) of padding windows would win the max-pool unmasked
    vocab = Vocab(["<unk>", "<pad>"] + [f"w{i}" for i in range(48)])
    short, long = ["w1", "w2", "w3"], [f"w{i}" for i in range(40)]
    alone = encode([short], vocab)
    both = encode([short, long], vocab)
    with torch.no_grad():
        assert torch.allclose(model(alone.ids, alone.lengths), model(both.ids, both.lengths)[:1], atol=1e-6)


def test_artifacts_are_safetensors_and_load_without_unpickling(tmp_path, monkeypatch):
    """The weights file is safetensors through and through (u64 header size, JSON header, tensors
    tiling the rest), and loading never unpickles: pickle and torch.load are made to refuse."""
    tiny_artifacts(tmp_path)
    raw = (tmp_path / WEIGHTS_FILE).read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + header_len])
    header.pop("__metadata__", None)
    spans = sorted(tuple(entry["data_offsets"]) for entry in header.values())
    assert spans[0][0] == 0 and all(x[1] == y[0] for x, y in zip(spans, spans[1:]))
    assert spans[-1][1] == len(raw) - 8 - header_len  # nothing but tensors after the header
    assert header["embedding.weight"]["dtype"] == "F16"  # stored half, up-cast at load

    def refuse(*args, **kwargs):
        raise AssertionError("loading the artifacts unpickled something")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    model = load_model(tmp_path)
    assert model.embedding.weight.dtype == torch.float32 and not model.training


def test_shipped_model_is_within_size_budget():
    total = sum(f.stat().st_size for f in SHIPPED.iterdir())
    assert total < 25_000_000


def test_shipped_model_classifies_the_tutorial_sentences():
    model, vocab = load_model(SHIPPED), Vocab.load(SHIPPED)
    batch = encode(tokenize([s for s, _ in TUTORIAL]), vocab)
    with torch.no_grad():
        logits = model(batch.ids, batch.lengths)
    assert ["pos" if logit > 0 else "neg" for logit in logits.tolist()] == [label for _, label in TUTORIAL]


def test_shipped_model_accuracy_on_imdb_test_reviews_matches_its_record():
    """2,000 IMDB test reviews (seeded sample) scored by the shipped model: at least 87% right, and
    within 3 standard errors (2 points) of the test accuracy that metrics.json records."""
    from imdb_training import data as imdb_data

    try:
        split = imdb_data.load(imdb_data.locate(), splits=("test",))["test"]
    except (FileNotFoundError, OSError) as err:
        pytest.skip(f"IMDB data not available: {err}")
    pick = torch.randperm(len(split.texts), generator=torch.Generator().manual_seed(0))[:2000].tolist()
    model, vocab = load_model(SHIPPED), Vocab.load(SHIPPED)
    batch = encode(tokenize([split.texts[i] for i in pick]), vocab)
    logits = TapEngine(model).logits(batch.ids, batch.lengths)
    accuracy = float(((logits > 0).long() == torch.tensor([split.labels[i] for i in pick])).float().mean())
    recorded = json.loads((SHIPPED / "metrics.json").read_text())["test_accuracy"]
    assert accuracy >= 0.87 and abs(accuracy - recorded) <= 0.02, (accuracy, recorded)


@pytest.mark.parametrize("pool", TutorialCNN.POOLS)
def test_tutorials_forward_on_the_same_layers_equals_the_models(pool):
    """TutorialCNN (Conv2d over [B, 1, T, E], ReLU, F.max_pool1d or amax) computes the model's
    function: the Conv1d form and either pool give the same logits, batched with lengths too."""
    torch.manual_seed(0)
    model = SentimentCNN(ModelConfig(vocab_size=50)).eval()
    tutorial = TutorialCNN(model, pool)
    assert not tutorial.training and tutorial.embedding is model.embedding
    ids = torch.randint(0, 50, (5, 23))
    lengths = torch.tensor([23, 7, 12, 23, 9])
    with torch.no_grad():
        assert torch.allclose(model(ids), tutorial(ids), atol=1e-5)
        assert torch.allclose(model(ids, lengths), tutorial(ids, lengths), atol=1e-5)


def test_tap_table_predictions_equal_the_models_forward():
    """TapEngine.logits (embedding_bag over per-token tables, in length groups) is the model's eval
    forward, batched or alone."""
    torch.manual_seed(0)
    model = SentimentCNN(ModelConfig(vocab_size=50)).eval()
    taps = TapEngine(model)
    ids = torch.randint(2, 50, (4, 20))
    ids[1, 9:] = 1
    lengths = torch.tensor([20, 9, 20, 20])
    with torch.no_grad():
        assert torch.allclose(taps.logits(ids, lengths), model(ids, lengths), atol=1e-5)
        assert torch.allclose(taps.logits(ids[1:2, :9], lengths[1:2]), model(ids[1:2, :9], lengths[1:2]), atol=1e-5)
        # lengths from 7 to 64 go in several groups; each row as scored alone
        g = torch.Generator().manual_seed(1)
        varied = torch.randint(7, 65, (12,), generator=g)
        long_ids = torch.randint(2, 50, (12, 64), generator=g).masked_fill(torch.arange(64) >= varied.unsqueeze(1), 1)
        alone = torch.stack([model(long_ids[i : i + 1, : varied[i]], varied[i : i + 1])[0] for i in range(12)])
        assert torch.allclose(taps.logits(long_ids, varied), alone, atol=1e-5)


def test_tap_tables_refuse_to_answer_for_changed_weights():
    """An engine answers for the weights it was built from: after the weights change (in place, or
    moved), it raises instead of answering for the old ones; a new engine answers for the new."""
    torch.manual_seed(0)
    model = SentimentCNN(ModelConfig(vocab_size=50)).eval()
    ids, lengths = torch.randint(2, 50, (3, 12)), torch.tensor([12, 12, 12])
    taps = TapEngine(model)
    with torch.no_grad():
        model.embedding.weight.mul_(2.0)
    with pytest.raises(StaleTablesError):
        taps.logits(ids, lengths)
    with pytest.raises(StaleTablesError):
        layer_ig(model, ids, lengths, IGSettings(method="exact"), taps=taps)
    with torch.no_grad():
        assert torch.allclose(TapEngine(model).logits(ids, lengths), model(ids, lengths), atol=1e-5)
    with pytest.raises(ValueError, match="another model"):  # one model's tables never explain another
        layer_ig(SentimentCNN(model.config).eval(), ids, lengths, IGSettings(method="exact"), taps=TapEngine(model))
    model.double()
    with pytest.raises(StaleTablesError):
        attach_then_move = attach(model)
        model.float()
        engine_for(model).logits(ids, lengths)
    assert model.tap_engine is attach_then_move


def test_an_attached_engine_is_built_once_and_used_by_every_caller():
    """attach(model) builds the engine once and attaches it (layer_ig without an engine attaches
    one on first use); engine_for and layer_ig then use it, so callers that pass no engine
    (benchmarks, scripts) do not rebuild the tables (~0.3 s) per call."""
    torch.manual_seed(0)
    model = SentimentCNN(ModelConfig(vocab_size=50)).eval()
    ids, lengths = torch.randint(2, 50, (3, 12)), torch.tensor([12, 8, 12])
    other = SentimentCNN(model.config).eval()
    layer_ig(other, ids, lengths, IGSettings(method="exact"))  # no engine given: one is attached, not rebuilt per call
    assert isinstance(other.tap_engine, TapEngine) and other.tap_engine.model is other
    taps = attach(model)
    assert model.tap_engine is taps and engine_for(model) is taps
    with torch.no_grad():
        assert torch.allclose(engine_for(model).logits(ids, lengths), model(ids, lengths), atol=1e-5)
        taps.convs[0].p0.add_(100.0)  # tamper with the attached tables: the entry points must follow them
        assert not torch.allclose(engine_for(model).logits(ids, lengths), model(ids, lengths), atol=1e-3)
        tampered = layer_ig(model, ids, lengths, IGSettings(method="exact"))
        fresh = layer_ig(model, ids, lengths, IGSettings(method="exact"), taps=TapEngine(model))
        assert not torch.allclose(tampered.logits, fresh.logits, atol=1e-3)
