"""The text pipeline shared by training and serving: text -> tokens -> ids -> padded batch.

Training, evaluation, the benchmark and the TorchServe handler all import this module, so the
tokens a model was trained on are the tokens it is served with.

**Memory.** spaCy keeps every new string it meets in its ``StringStore`` (with a lexeme for it)
for the life of the process: a worker sent random words would grow without end (issue 20:
about 0.5 KB per unseen word). Every tokenizing call here runs inside spaCy's own
``Language.memory_zone()``: the strings and lexemes first seen inside it are freed when it
ends, and what leaves it is copied out (token strings sliced from the text, ids in numpy).
Inside a zone spaCy caches nothing, so ``warm_tokenizer`` fills its chunk cache once at load
with the vocabulary's words (and ``word.``, ``word,``, ``(word`` ... for the frequent ones)
outside any zone: bounded by the vocabulary, and faster than the cache spaCy used to fill with
the first 10,000 chunks it met. spaCy's hash tables keep a tombstone per freed string, so the
tokenizer is rebuilt after ``REBUILD_AFTER`` unseen words (``memory_zone``); 3,000,000 random
words leave RSS flat (288 -> 295 MB; +67 MB without the rebuilds, +0.45 KB a word before zones).

**Speed.** Tokens come from spaCy's own arrays (``Doc.to_array``: ORTH hash, offset, length,
is-space), never from ``Token`` objects; ORTH hashes become vocabulary ids through one sorted
array searched with numpy (``Vocab.orth_ids``, built at load); a batch is padded in one numpy call.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from handler.long_runs import bound_runs

UNK, PAD = "<unk>", "<pad>"
VOCAB_FILE = "vocab.json"
# IMDB reviews carry HTML line breaks ("<br /><br />"); they are layout, not words.
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_SURROGATE = re.compile("[\ud800-\udfff]")

_nlp = None
_zone_lock = threading.RLock()  # one memory zone at a time: spaCy's zones must not nest
_warmed: dict[int, tuple[str, ...]] = {}  # the word lists warm_tokenizer cached, by their hash
# Unseen words (strings spaCy added inside memory zones) before the tokenizer is rebuilt (memory_zone).
REBUILD_AFTER = 500_000
_unseen = 0
# What warm_tokenizer caches besides each vocabulary word: (before, after, how many of the most
# frequent words). IMDB's whitespace-free chunks are a vocabulary word in 84% of cases, one before
# "." or "," in 8%, and before or after the other marks here in 2% more.
WARM_AFFIXES = (
    *(("", s, 10_000) for s in (".", ",")),
    *(("", s, 3_000) for s in ("!", "?", ")", '"', ":", ";", "'s", "...", ").", '".', '",')),
    *((p, "", 3_000) for p in ("(", '"')),
    ('"', '"', 3_000),
)
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


def spacy_nlp():
    """``spacy.blank("en")``: spaCy's rule-based English tokenizer, no model download. One per process.

    Its vocabulary computes one lexical attribute only, IS_SPACE (``tokenize`` drops space tokens):
    spaCy's 25 others (norm, shape, prefix, suffix, stop word, ...) are never read here, not by
    the tokenizer either, and cost ~15 µs per new word, which inside a memory zone means every
    word not in the vocabulary, in every request. Tokens are spaCy's own either way
    (``scripts/check_tokenizer.py`` compares them with an untouched ``spacy.blank("en")``).
    """
    global _nlp
    if _nlp is None:
        import spacy
        from spacy.attrs import IS_SPACE

        nlp = spacy.blank("en")
        nlp.vocab.lex_attr_getters = {IS_SPACE: nlp.vocab.lex_attr_getters[IS_SPACE]}
        _nlp = nlp
    return _nlp


def spacy_tokenizer():
    """spaCy's rule-based English tokenizer (``spacy_nlp().tokenizer``)."""
    return spacy_nlp().tokenizer


@contextmanager
def memory_zone() -> Iterator[None]:
    """spaCy's ``Language.memory_zone()``: strings and lexemes new inside it are freed at its end,
    so no Doc, Token or Lexeme made inside may be used after it. One zone at a time (a lock);
    a call already inside one stays in it (spaCy's zones must not nest).

    The zone frees the strings, but spaCy's hash tables (preshed maps) keep a tombstone for each
    and double when tombstones fill them: ~20 bytes per unseen word stay (3,000,000 random words:
    RSS +67 MB in doublings). After ``REBUILD_AFTER`` unseen words the tokenizer is built afresh
    (``_rebuild``: a new ``spacy.blank("en")``, warmed again, ~1 s), so those tables stay bounded.
    """
    global _unseen
    with _zone_lock:
        if _nlp is not None and _nlp.vocab.in_memory_zone:
            yield
            return
        if _unseen >= REBUILD_AFTER:
            _rebuild()
        nlp = spacy_nlp()
        with nlp.memory_zone():
            before = len(nlp.vocab.strings)  # permanent strings; the zone's own are counted in too
            try:
                yield
            finally:
                _unseen += len(nlp.vocab.strings) - before


def _rebuild() -> None:
    """A fresh tokenizer, warmed with the same words: the old one's tables go with it."""
    global _nlp, _unseen
    from handler import long_runs

    _nlp, _unseen = None, 0
    long_runs.splits_off.cache_clear()  # their keys hold the old tokenizer
    long_runs.strip_cost.cache_clear()
    words = list(_warmed.values())
    _warmed.clear()
    for w in words:
        warm_tokenizer(w)


def warm_tokenizer(words: Sequence[str]) -> None:
    """Cache spaCy's tokens of ``words`` (a vocabulary, most frequent first) outside any memory zone.

    Inside a zone spaCy neither caches nor keeps strings, so every chunk it has not cached
    before is split afresh: this fills the cache once, at load (shipped vocabulary: 87,000
    chunks, 1.4 s on a 2-core EPYC). The cache's bound is raised to hold them: the memory kept is
    bounded by the vocabulary, not by the traffic. Once per word list per tokenizer.
    """
    words = tuple(words)
    key = hash(words)
    if key in _warmed:
        return
    chunks = [w for w in words if w and not any(c.isspace() for c in w)]
    chunks += [before + w + after for before, after, top in WARM_AFFIXES for w in chunks[:top]]
    tokenizer = spacy_tokenizer()
    with _zone_lock:
        if spacy_nlp().vocab.in_memory_zone:
            raise RuntimeError("warm_tokenizer inside a memory zone would cache nothing")
        tokenizer.max_cache_size = max(tokenizer.max_cache_size, len(chunks) + 10_000)
        for chunk in chunks:  # one call each: spaCy stops caching a Doc's chunks after a special case
            tokenizer(chunk)
    _warmed[key] = words


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


def _attrs() -> list[int]:
    from spacy.attrs import IDX, IS_SPACE, LENGTH, ORTH

    return [ORTH, IDX, LENGTH, IS_SPACE]


def _token_arrays(texts: Sequence[str]) -> Iterator[tuple[list[str], np.ndarray]]:
    """Per cleaned text: (its non-space tokens, their ORTH ids), from spaCy's arrays. The strings
    are slices of the text (spaCy's tokenizer keeps every character), so nothing refers to the
    Doc after; ``Token.text`` would build a Python object per token, ``Doc.text`` too."""
    attrs = _attrs()
    for text, doc in zip(texts, spacy_tokenizer().pipe(texts)):
        arr = doc.to_array(attrs)  # [n, 4] uint64: ORTH, IDX, LENGTH, IS_SPACE
        if arr.shape[0] and arr[:, 3].any():
            arr = arr[arr[:, 3] == 0]
        starts = arr[:, 1].tolist()
        ends = (arr[:, 1] + arr[:, 2]).tolist()
        yield [text[i:j] for i, j in zip(starts, ends)], arr[:, 0].copy()


class Tokens(list):
    """One review's tokens (a ``list`` of ``str``, equal to the plain list) with spaCy's ORTH ids of
    them (``orths`` [len] uint64), which ``encode`` turns into vocabulary ids without a Python loop."""

    __slots__ = ("orths",)

    def __init__(self, tokens: Iterable[str], orths: np.ndarray):
        super().__init__(tokens)
        self.orths = orths


def tokenize(texts: Sequence[str], lowercase: bool = True) -> list[Tokens]:
    """Lower-case, drop HTML line breaks, spaCy-tokenize; whitespace tokens are dropped.

    Linear in the length of the text (see ``clean``); raises nothing on any ``str``; runs in a
    memory zone (spaCy keeps none of the strings it meets here).
    """
    with memory_zone():
        return [Tokens(tokens, orths) for tokens, orths in _token_arrays([clean(t, lowercase) for t in texts])]


class Vocab:
    """Token <-> id map with ``<unk>`` at 0 and ``<pad>`` at 1 (the tutorial's torchtext layout)."""

    def __init__(self, itos: Sequence[str]):
        if list(itos[:2]) != [UNK, PAD]:
            raise ValueError(f"vocabulary must start with {UNK!r}, {PAD!r}")
        self.itos = list(itos)
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary has duplicate tokens")
        self._orth_table: tuple[np.ndarray, np.ndarray] | None = None

    unk_idx, pad_idx = 0, 1

    def __len__(self) -> int:
        return len(self.itos)

    def lookup(self, tokens: Sequence[str]) -> list[int]:
        return [self.stoi.get(t, self.unk_idx) for t in tokens]

    def orth_table(self) -> tuple[np.ndarray, np.ndarray]:
        """(slots [2^k] uint64, ids [2^k] int64): spaCy's ORTH id of each token in an open-addressing
        hash table (the ORTH's low bits, then the next slots; 0 is empty), built on first use,
        at most a quarter full. spaCy's ORTH of a token is ``get_string_id`` of its text: a 64-bit
        hash, or a symbol's number for the few strings spaCy reserves (``case``, ``det``, ...)."""
        if self._orth_table is None:
            from spacy.strings import get_string_id

            keys = [get_string_id(t) for t in self.itos]
            if len(set(keys)) != len(keys) or 0 in keys:  # two tokens with one id could not be told apart
                raise ValueError("two vocabulary tokens share spaCy's 64-bit string id")
            size = 1 << max(4, (4 * len(keys) - 1).bit_length())
            slots, ids = np.zeros(size, dtype=np.uint64), np.zeros(size, dtype=np.int64)
            for i, key in enumerate(keys):
                at = key & (size - 1)
                while slots[at]:
                    at = (at + 1) & (size - 1)
                slots[at], ids[at] = key, i
            self._orth_table = slots, ids
        return self._orth_table

    def orth_ids(self, orths: np.ndarray) -> np.ndarray:
        """spaCy ORTH ids [n] -> vocabulary ids [n] int64 (``<unk>`` where absent): ``lookup`` of the
        tokens' texts, a few vectorised probes of the hash table (most tokens are settled by the
        first; a binary search took twice as long). Two strings with one 64-bit hash would share
        an id; among the vocabulary's there are none (checked when the table is built)."""
        slots, ids = self.orth_table()
        mask = len(slots) - 1
        at = (orths & np.uint64(mask)).astype(np.intp)
        out = np.full(len(orths), self.unk_idx, dtype=np.int64)
        todo = np.arange(len(orths))
        while todo.size:
            found = slots[at]
            hit = found == orths[todo]
            out[todo[hit]] = ids[at[hit]]
            going = ~hit & (found != 0)  # neither found nor at an empty slot: probe the next
            todo, at = todo[going], (at[going] + 1) & mask
        return out

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
    Lists from ``tokenize`` carry spaCy's ids, looked up in one search for the batch (``Vocab.orth_ids``);
    others go through ``Vocab.lookup``. The ids are padded in one numpy assignment.
    """
    if max_tokens < min_len:
        raise ValueError("max_tokens must be >= min_len")
    kept = [list(t[:max_tokens]) for t in token_lists]
    flat = _ids(token_lists, kept, vocab)
    n = np.array([len(k) for k in kept], dtype=np.int64)
    lengths = np.maximum(n, min_len)
    width = int(lengths.max(initial=min_len))
    ids = np.full((len(kept), width), vocab.pad_idx, dtype=np.int64)
    if kept:
        ids[np.arange(width) < n[:, None]] = flat
    return EncodedBatch(
        ids=torch.from_numpy(ids),
        lengths=torch.from_numpy(lengths),
        tokens=kept,
        truncated=[len(t) > max_tokens for t in token_lists],
        n_unknown=(ids == vocab.unk_idx).sum(axis=1).tolist(),
    )


def _ids(token_lists: Sequence[Sequence[str]], kept: list[list[str]], vocab: Vocab) -> np.ndarray:
    """The kept tokens' ids, all rows one after the other: one search for the rows that carry
    spaCy's ids (``Tokens`` whose list is unchanged), ``Vocab.lookup`` for the others."""
    orths = [getattr(t, "orths", None) for t in token_lists]
    if all(o is not None and len(o) == len(t) for o, t in zip(orths, token_lists)):
        return vocab.orth_ids(np.concatenate([o[: len(k)] for o, k in zip(orths, kept)] or [_NO_ORTHS]))
    return np.array([i for k in kept for i in vocab.lookup(k)], dtype=np.int64)


_NO_ORTHS = np.zeros(0, dtype=np.uint64)
