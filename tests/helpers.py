"""Shared test helpers: a tiny random model written as real artifacts (fast, no training)."""

from __future__ import annotations

from pathlib import Path

import torch

from handler.model import ModelConfig, SentimentCNN, save_artifacts
from handler.text import Vocab, tokenize

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
SHIPPED = REPO / "model_store" / "artifacts"


WORDS = (
    "it was a fantastic performance ! best film ever such great show horrible movie "
    "i 've never watched something as bad that is terrible . the plot acting"
)


def tiny_artifacts(directory: Path, seed: int = 0, **config) -> Path:
    """Random-weight model + vocabulary in ``directory``, loadable like the shipped model."""
    vocab = Vocab.build(tokenize([WORDS]), max_size=100)
    torch.manual_seed(seed)
    model = SentimentCNN(ModelConfig(vocab_size=len(vocab), pad_idx=vocab.pad_idx, **config))
    save_artifacts(model, directory)
    vocab.save(directory)
    return directory
