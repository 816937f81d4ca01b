"""Bounding what spaCy's tokenizer is given, so that tokenizing costs time linear in the text.

spaCy splits a text at whitespace, then strips prefixes and suffixes off each whitespace-free run
one at a time; each strip searches and copies the rest of the run, so a run that sheds k affixes
costs O(k * length): 10,000 ``!`` took 10 s, 30,000 took 72 s. ``bound_runs`` rewrites only the
runs that could shed more than ``MAX_STRIPS`` affixes or are longer than ``MAX_RUN``, so spaCy's
work is at most O(MAX_STRIPS) per character; every other run reaches spaCy unchanged.

Most runs are shorter than ``MAX_STRIPS + 1`` characters and are never looked at (one regex pass
finds the longer ones); of those, most hold at most ``MAX_STRIPS`` symbols. In the others:

- A character that spaCy splits off one at a time (``!``, ``*``, ``_``, emoji: ``splits_off``),
  repeated ``SPREAD_FROM`` times or more at the run's start or end, is spread out with spaces:
  spaCy then sees each copy alone (one cached lookup each) and gives the same single-character
  tokens it gave before.
- A run still longer than ``MAX_RUN``, or still shedding more than ``MAX_STRIPS`` affixes, is cut
  into its alphanumeric stretches (at most ``MAX_RUN`` long), its runs of a character spaCy keeps
  together (``....``, ``----``), and single other characters. No IMDB review has such a run.

``scripts/check_tokenizer.py`` measures both claims: the 25,000 test reviews' tokens are
identical to spaCy's alone, and pathological inputs of 100,000 characters take a fraction of a second.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

MAX_RUN = 80  # characters; the 25,000 test reviews' longest whitespace-free run has 76
MAX_STRIPS = 16  # affixes one run may shed (after spreading); the test reviews need at most 13
SPREAD_FROM = 4  # copies of a split-off character from which they are spread out
ATTACHED = 3  # copies left on the word: special cases (emoticons) are short

_SYMBOL = r"(?:[^\w\s]|_)"  # neither alphanumeric nor whitespace
# Runs worth a look: longer than MAX_RUN, or holding more than MAX_STRIPS symbols (with fewer,
# spaCy cannot strip more affixes than that). Most words are neither: no Python call for them.
_CANDIDATE = re.compile(rf"(?<!\S)(?:\S{{{MAX_RUN + 1},}}|(?=(?:[^\W_]*{_SYMBOL}){{{MAX_STRIPS + 1}}})\S+)")
# The cheap pre-check: a candidate is at least MAX_STRIPS + 1 characters long, so only runs that
# long are given to _CANDIDATE (one IMDB review in six has one). _CANDIDATE's look-ahead at every
# run start made the pass over a whole review three times dearer: 58 -> 20 µs per IMDB review.
_LONG = re.compile(rf"(?<!\S)\S{{{min(MAX_RUN, MAX_STRIPS) + 1},}}")
_SYMBOLS = re.compile(rf"{_SYMBOL}*")
_SAME_SYMBOLS = re.compile(rf"({_SYMBOL})\1*")  # a maximal stretch of one repeated symbol
_PIECE = re.compile(rf"[^\W_]{{1,{MAX_RUN}}}|({_SYMBOL})\1*|\S")


def _copies_tokens(char: str, n: int, side: str, word: str, tokenizer: Callable) -> list[str]:
    """spaCy's tokens of ``n`` copies of ``char`` before ("prefix") or after ("suffix") ``word``, or
    alone, without the word's own token."""
    text = {"prefix": char * n + word, "suffix": word + char * n, "alone": char * n}[side]
    return [t.text for t in tokenizer(text) if side == "alone" or t.text != word]


_WORDS = {"alone": ("",), "prefix": ("a", "1"), "suffix": ("a", "1")}  # a letter and a digit


@lru_cache(maxsize=8192)
def splits_off(char: str, side: str, tokenizer: Callable) -> bool:
    """Whether spaCy makes each copy of ``char`` a token of its own on that side of a word."""
    return all(
        _copies_tokens(char, SPREAD_FROM, side, word, tokenizer) == [char] * SPREAD_FROM for word in _WORDS[side]
    )


@lru_cache(maxsize=8192)
def strip_cost(char: str, side: str, tokenizer: Callable) -> int | None:
    """Affixes spaCy strips off a stretch of ``char`` on that side of a word: a constant (``....``
    is one token, ``----`` on a word none) or None: one per copy (``!!!!``)."""
    costs = []
    for word in _WORDS[side]:
        short, long = (len(_copies_tokens(char, n, side, word, tokenizer)) for n in (SPREAD_FROM, 2 * SPREAD_FROM))
        if short != long:
            return None
        costs.append(short)
    return max(costs)


def _stretch_strips(stretch: str, side: str, tokenizer: Callable) -> int:
    """Affixes spaCy may strip off a stretch of symbols, stretch by stretch of one symbol."""
    total = 0
    for m in _SAME_SYMBOLS.finditer(stretch):
        cost = strip_cost(m.group(1), side, tokenizer)
        total += len(m.group()) if cost is None else cost
    return total


def strips(run: str, tokenizer: Callable) -> int:
    """Affixes spaCy may strip off ``run``, at most: from its leading and trailing symbols (symbols
    inside a run are infixes, found in one linear pass)."""
    lead = _SYMBOLS.match(run).group()
    if len(lead) == len(run):
        return _stretch_strips(run, "alone", tokenizer)
    trail = _SYMBOLS.match(run[::-1]).group()
    return _stretch_strips(lead, "prefix", tokenizer) + _stretch_strips(trail, "suffix", tokenizer)


def _spreads(stretch: re.Match | None, side: str, tokenizer: Callable) -> bool:
    return stretch is not None and len(stretch.group()) >= SPREAD_FROM and splits_off(stretch.group(1), side, tokenizer)


def _spread(run: str, tokenizer: Callable) -> tuple[str, str, str]:
    """(head, core, tail): the outer copies of a split-off symbol repeated at the run's start
    (head) or end (tail), which spaCy strips one at a time anyway, and the rest.

    ``ATTACHED`` copies stay on the core, so a special case at the border (the ``:)`` of
    ``:))))))``) still sees its context.
    """
    head = tail = ""
    first = _SAME_SYMBOLS.match(run)
    if first and len(first.group()) == len(run):  # one symbol repeated, nothing else
        if _spreads(first, "alone", tokenizer):
            return run[:-ATTACHED], run[-ATTACHED:], ""
        return "", run, ""
    if len(_SYMBOLS.match(run).group()) == len(run):  # symbols only: no word to strip them off
        return "", run, ""
    if _spreads(first, "prefix", tokenizer):
        cut = len(first.group()) - ATTACHED
        head, run = run[:cut], run[cut:]
    last = _SAME_SYMBOLS.match(run[::-1])
    if _spreads(last, "suffix", tokenizer):
        cut = len(run) - len(last.group()) + ATTACHED
        run, tail = run[:cut], run[cut:]
    return head, run, tail


def _pieces(run: str, tokenizer: Callable) -> str:
    """The last resort for a run no review has: alphanumeric stretches, stretches of a symbol
    spaCy keeps together, and single other characters, spaced apart."""
    out = []
    for m in _PIECE.finditer(run):
        symbol = m.group(1)
        keep = symbol is None or strip_cost(symbol, "alone", tokenizer) is not None
        out.append(m.group() if keep else " ".join(m.group()))
    return " ".join(out)


def bound_runs(text: str, tokenizer: Callable) -> str:
    """``text`` with every whitespace-free run cheap for ``tokenizer`` (spaCy's) to tokenize."""

    def bound(m: re.Match) -> str:
        run = m.group()
        if len(run) <= MAX_RUN:
            head, core, tail = _spread(run, tokenizer)
            if strips(core, tokenizer) <= MAX_STRIPS:
                return " ".join([*head, core, *tail])
        return _pieces(run, tokenizer)

    return _LONG.sub(lambda long: _CANDIDATE.sub(bound, long.group()), text)
