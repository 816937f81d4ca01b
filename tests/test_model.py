"""The CNN: shapes, padding invariance, pickle-free artifacts, and the shipped default model."""

import json
import struct

import torch
from helpers import SHIPPED, tiny_artifacts
from train import TUTORIAL_SENTENCES

from handler.model import WEIGHTS_FILE, ModelConfig, SentimentCNN, load_model, predict_logits, token_taps
from handler.text import Vocab, encode, tokenize

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


def test_artifacts_load_without_pickle(tmp_path):
    tiny_artifacts(tmp_path)
    raw = (tmp_path / WEIGHTS_FILE).read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]  # safetensors: u64 header size, then JSON
    header = json.loads(raw[8 : 8 + header_len])
    assert header["embedding.weight"]["dtype"] == "F16"  # stored half, up-cast at load
    assert not raw.startswith(b"PK") and b"\x80\x02" not in raw[:2]  # neither zip nor pickle
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
    assert ["pos" if l > 0 else "neg" for l in logits.tolist()] == [label for _, label in TUTORIAL]


def test_shipped_metrics_report_test_accuracy_of_at_least_87_percent():
    metrics = json.loads((SHIPPED / "metrics.json").read_text())
    assert metrics["n_test"] == 25000 and metrics["test_accuracy"] >= 0.87


def test_conv1d_form_equals_the_tutorials_conv2d_forward():
    """The forward runs the Conv2d(1, F, (fs, E)) layers as Conv1d; results must not change."""
    torch.manual_seed(0)
    model = SentimentCNN(ModelConfig(vocab_size=50)).eval()
    ids = torch.randint(0, 50, (5, 23))
    with torch.no_grad():
        x = model.embedding(ids).unsqueeze(1)  # [B, 1, T, E]: the tutorial's layout
        pooled = [torch.relu(conv(x).squeeze(3)).amax(dim=2) for conv in model.convs]
        tutorial = model.fc(torch.cat(pooled, dim=1)).squeeze(1)
        assert torch.allclose(model(ids), tutorial, atol=1e-5)


def test_tap_table_predictions_equal_the_models_forward_and_follow_weight_changes():
    """predict_logits (embedding_bag over per-token tables) is the model's eval forward, batched
    or alone, and rebuilds its tables when the weights change in place."""
    torch.manual_seed(0)
    model = SentimentCNN(ModelConfig(vocab_size=50)).eval()
    ids = torch.randint(2, 50, (4, 20))
    ids[1, 9:] = 1
    lengths = torch.tensor([20, 9, 20, 20])
    with torch.no_grad():
        assert torch.allclose(predict_logits(model, ids, lengths), model(ids, lengths), atol=1e-5)
        assert torch.allclose(
            predict_logits(model, ids[1:2, :9], lengths[1:2]), model(ids[1:2, :9], lengths[1:2]), atol=1e-5
        )
        # lengths from 7 to 64 go in several groups; each row as scored alone
        g = torch.Generator().manual_seed(1)
        varied = torch.randint(7, 65, (12,), generator=g)
        long_ids = torch.randint(2, 50, (12, 64), generator=g).masked_fill(torch.arange(64) >= varied.unsqueeze(1), 1)
        alone = torch.stack([model(long_ids[i : i + 1, : varied[i]], varied[i : i + 1])[0] for i in range(12)])
        assert torch.allclose(predict_logits(model, long_ids, varied), alone, atol=1e-5)
        before = token_taps(model)
        assert token_taps(model) is before  # cached
        model.embedding.weight.mul_(2.0)
        assert token_taps(model) is not before
        assert torch.allclose(predict_logits(model, ids, lengths), model(ids, lengths), atol=1e-5)
