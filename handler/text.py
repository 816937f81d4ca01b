"""The text pipeline shared by training and serving: text -> tokens -> ids -> padded batch.

Training, evaluation, the benchmark and the TorchServe handler all import this module, so the
tokens a model was trained on are the tokens it is served with.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from handler.long_runs import bound_runs

UNK, PAD = "<unk>", "<pad>"
VOCAB_FILE = "vocab.json"
# IMDB reviews carry HTML line breaks ("<br /><br />"); they are layout, not words.
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_SURROGATE = re.compile("[\ud800-\udfff]")

_tokenizer = None
MODEL_CONFIG_FILE = "model_config.json"


@dataclass(frozen=True)
class TextSettings:
    """The text pipeline a model was trained with. Training records it in ``model_config.json``
    under ``"text"`` and serving reads it from there, so the weights carry their own pipeline."""

    min_len: int = 7  # the tutorial's padding; must be >= the widest filter (5)
    max_tokens: int = 512  # longer reviews are truncated; answers say "truncated": true
    lowercase: bool = True

    def __post_init__(self):
        if not 1 <= self.min_len <= self.max_tokens:
            raise ValueError(f"text settings need 1 <= min_len <= max_tokens, got {self.min_len}, {self.max_tokens}")

    @classmethod
    def load(cls, directory: Path) -> TextSettings:
        """The ``"text"`` record of ``model_config.json``; the defaults for artifacts that predate it."""
        path = Path(directory, MODEL_CONFIG_FILE)
        record = json.loads(path.read_text()).get("text", {}) if path.exists() else {}
        unknown = set(record) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown text settings {sorted(unknown)}")
        return cls(**record)

    def as_dict(self) -> dict:
        return asdict(self)


def spacy_tokenizer():
    """spaCy's rule-based English tokenizer; ``spacy.blank`` needs no model download."""
    global _tokenizer
    if _tokenizer is None:
        import spacy

        _tokenizer = spacy.blank("en").tokenizer
    return _tokenizer


def clean(text: str, lowercase: bool = True) -> str:
    """The text spaCy is given: HTML breaks dropped, lone surrogates repaired, costly runs bounded
    (``handler.long_runs``: linear time, spaCy's own tokens for every IMDB review).

    A lone UTF-16 surrogate (JSON allows ``"\\ud800"``) cannot be encoded as UTF-8, and spaCy
    raises ``UnicodeEncodeError`` on it: surrogate pairs are joined, lone ones become U+FFFD, so
    ``tokenize`` never raises on a ``str``.
    """
    text = _BREAK.sub(" ", text)
    if _SURROGATE.search(text):
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    if lowercase:
        text = text.lower()
    return bound_runs(text, spacy_tokenizer())


def tokenize(texts: Sequence[str], lowercase: bool = True) -> list[list[str]]:
    """Lower-case, drop HTML line breaks, spaCy-tokenize; whitespace tokens are dropped.

    Linear in the length of the text (see ``clean``); raises nothing on any ``str``.
    """
    cleaned = (clean(t, lowercase) for t in texts)
    return [[tok.text for tok in doc if not tok.is_space] for doc in spacy_tokenizer().pipe(cleaned)]


class Vocab:
    """Token <-> id map with ``<unk>`` at 0 and ``<pad>`` at 1 (the tutorial's torchtext layout)."""

    def __init__(self, itos: Sequence[str]):
        if list(itos[:2]) != [UNK, PAD]:
            raise ValueError(f"vocabulary must start with {UNK!r}, {PAD!r}")
        self.itos = list(itos)
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary has duplicate tokens")

    unk_idx, pad_idx = 0, 1

    def __len__(self) -> int:
        return len(self.itos)

    def lookup(self, tokens: Sequence[str]) -> list[int]:
        return [self.stoi.get(t, self.unk_idx) for t in tokens]

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], max_size: int, min_freq: int = 1) -> Vocab:
        """Most frequent tokens first (ties alphabetical, so the build is deterministic)."""
        counts = Counter(t for tokens in token_lists for t in tokens)
        counts.pop(UNK, None), counts.pop(PAD, None)
        ranked = sorted((c, t) for t, c in counts.items() if c >= min_freq)
        ranked.sort(key=lambda ct: (-ct[0], ct[1]))
        return cls([UNK, PAD] + [t for _, t in ranked[: max_size - 2]])

    def save(self, directory: Path) -> None:
        Path(directory, VOCAB_FILE).write_text(json.dumps(self.itos, ensure_ascii=False))

    @classmethod
    def load(cls, directory: Path) -> Vocab:
        return cls(json.loads(Path(directory, VOCAB_FILE).read_text()))


@dataclass
class EncodedBatch:
    ids: torch.Tensor  # [B, T] token ids, padded with <pad> to T = max(lengths)
    lengths: torch.Tensor  # [B] per-row length the model sees: max(n_tokens, min_len)
    tokens: list[list[str]]  # per row, the tokens kept (after truncation), no padding
    truncated: list[bool]  # per row, whether tokens beyond max_tokens were cut
    n_unknown: list[int]  # per row, how many kept tokens map to <unk>

    def to(self, device: torch.device | str) -> EncodedBatch:
        self.ids, self.lengths = self.ids.to(device), self.lengths.to(device)
        return self


def encode(token_lists: Sequence[Sequence[str]], vocab: Vocab, min_len: int = 7, max_tokens: int = 512) -> EncodedBatch:
    """Token lists -> one padded id batch.

    Each row is padded to at least ``min_len`` (the tutorial's 7; the widest filter is 5, so a
    shorter review would have no window at all) and all rows to the longest row of the batch.
    """
    if max_tokens < min_len:
        raise ValueError("max_tokens must be >= min_len")
    kept = [list(t[:max_tokens]) for t in token_lists]
    lengths = [max(len(t), min_len) for t in kept]
    width = max(lengths, default=min_len)
    ids = torch.full((len(kept), width), vocab.pad_idx, dtype=torch.long)
    n_unknown = []
    for row, tokens in enumerate(kept):
        row_ids = vocab.lookup(tokens)
        ids[row, : len(row_ids)] = torch.tensor(row_ids, dtype=torch.long)
        n_unknown.append(sum(i == vocab.unk_idx for i in row_ids))
    return EncodedBatch(
        ids=ids,
        lengths=torch.tensor(lengths, dtype=torch.long),
        tokens=kept,
        truncated=[len(t) > max_tokens for t in token_lists],
        n_unknown=n_unknown,
    )
