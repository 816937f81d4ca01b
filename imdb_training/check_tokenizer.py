"""Check the bounded tokenizer: spaCy's own tokens on real reviews, bounded time on pathological ones.

usage: python scripts/check_tokenizer.py [--data PATH] [--split test [train]] [--chars 100000] [--alone-chars 10000]

1. Tokenizes every review of the split (``--split train test``: all 50,000 labelled reviews)
   twice, with ``handler.text.tokenize`` (spaCy's arrays, in memory zones, the served vocabulary's
   lexical attributes trimmed, its cache warmed with the shipped vocabulary as a worker's is) and
   with a ``spacy.blank("en")`` nobody touched, on the same lower-cased, ``<br />``-free text, and
   counts the reviews whose tokens differ (the bound on whitespace-free runs must leave real
   reviews alone, and the served path must give spaCy's own tokens).
2. Times ``tokenize`` on pathological inputs of --chars characters (one call each, one thread),
   with spaCy alone's time on the first --alone-chars characters of each for scale.
Prints one JSON line: wall-clock and CPU seconds (CPU time is steadier on a shared machine;
report the load average beside either).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

from handler.long_runs import MAX_RUN, MAX_STRIPS
from handler.text import _BREAK, Vocab, spacy_tokenizer, tokenize, warm_tokenizer
from imdb_training import data as imdb_data

REPO = Path(__file__).resolve().parent.parent


ARTIFACTS = REPO / "model_store" / "artifacts"


def pathological(n: int, seed: int = 0) -> dict[str, str]:
    """Inputs on which spaCy alone is quadratic, or which probe the bounds (runs just within them)."""
    rng = random.Random(seed)
    punct = "!?()[]\"'.,;:*-"

    def runs(length: int, alphabet: str) -> str:  # distinct runs, so spaCy's cache cannot help
        words = ["".join(rng.choice(alphabet) for _ in range(length)) for _ in range(n // (length + 1))]
        return " ".join(words)

    def wrapped(k: int) -> str:  # a word inside k/2 distinct symbols a side: k affixes to strip
        words = []
        while sum(map(len, words)) + len(words) < n:
            left, right = (("".join(rng.choice("!?([\"'") for _ in range(k // 2))) for _ in range(2))
            words.append(left + "a" * rng.randint(1, MAX_RUN - k) + right)
        return " ".join(words)[:n]

    return {
        "!": "!" * n,
        "(": "(" * n,
        "'": "'" * n,
        ".": "." * n,
        "-": "-" * n,
        "emoji": "".join(rng.choice("😀😂🎬👍💥🔥") for _ in range(n // 2)),
        "!?": "!?" * (n // 2),
        "a!": "a!" * (n // 2),
        ":)": ":)" * (n // 2),
        "letters": "a" * n,
        "random_printable": "".join(rng.choice(punct + "abc019") for _ in range(n)),
        "punct_runs_of_80": runs(MAX_RUN, punct),
        "punct_runs_of_20": runs(20, punct),
        "emoji_runs_of_40": runs(40, "😀😂🎬👍💥🔥"),
        f"words_wrapped_in_{MAX_STRIPS}_symbols": wrapped(MAX_STRIPS),
        "newlines": "\n" * n,
        "word_newline": "a\n" * (n // 2),
    }


def identical_tokens(texts: list[str]) -> tuple[int, float, float]:
    """(reviews whose tokens differ, seconds with tokenize, seconds with spaCy alone)."""
    import spacy

    if (ARTIFACTS / "vocab.json").exists():
        warm_tokenizer(Vocab.load(ARTIFACTS).itos[2:])  # as a worker's tokenizer is at load
    started = time.perf_counter()
    ours = [t for start in range(0, len(texts), 8) for t in tokenize(texts[start : start + 8])]  # batches of 8
    ours_s = time.perf_counter() - started
    untouched = spacy.blank("en").tokenizer
    started = time.perf_counter()
    plain = [
        [t.text for t in doc if not t.is_space] for doc in untouched.pipe(_BREAK.sub(" ", t).lower() for t in texts)
    ]
    plain_s = time.perf_counter() - started
    return sum(a != b for a, b in zip(ours, plain)), ours_s, plain_s


def timings(n: int, alone_chars: int) -> dict[str, dict]:
    """Per input: wall and CPU seconds of ``tokenize``, and spaCy alone's on ``alone_chars`` of it."""
    out = {}
    tokenize(["warm up: spaCy loads on first use"])
    for name, text in pathological(n).items():
        wall, cpu = time.perf_counter(), time.process_time()
        tokens = tokenize([text])[0]
        out[name] = {
            "seconds": round(time.perf_counter() - wall, 3),
            "cpu_seconds": round(time.process_time() - cpu, 3),
        }
        out[name]["tokens"] = len(tokens)
        if alone_chars:
            cpu = time.process_time()
            spacy_tokenizer()(text[:alone_chars])
            out[name][f"spacy_alone_cpu_seconds_{alone_chars}_chars"] = round(time.process_time() - cpu, 3)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="IMDB tarball or aclImdb folder (default: found as in training)")
    p.add_argument("--split", nargs="+", default=["test"], choices=("train", "test", "unsup"))
    p.add_argument("--chars", type=int, default=100_000)
    p.add_argument("--alone-chars", type=int, default=10_000, help="spaCy alone's share of each input (0: skip)")
    a = p.parse_args(argv)
    splits = imdb_data.load(imdb_data.locate(a.data), splits=tuple(a.split))
    texts = [t for name in a.split for t in splits[name].texts]
    differ, ours_s, plain_s = identical_tokens(texts)
    result = {
        "split": "+".join(a.split),
        "reviews": len(texts),
        "reviews_with_different_tokens": differ,
        "seconds_tokenize": round(ours_s, 1),
        "seconds_spacy_alone": round(plain_s, 1),
        "pathological": timings(a.chars, a.alone_chars),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
