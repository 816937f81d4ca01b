"""Slow reliability runs against a real server on loopback (docs/reliability.md).

usage: python scripts/soak.py soak  [--server torchserve|kserve] [--requests 20000] [--concurrency 16]
                                    [--hostile 0.05] [--novel 0.2] [--fuzz 0.02] [--rss-interval 10]
       python scripts/soak.py chaos [--server torchserve|kserve] [--reviews 5000] [--kills 3]
                                    [--retries 5] [--concurrency 2] [--restart-delay 0]

soak:  ``--requests`` requests at ``--concurrency``, to TorchServe's /predictions and /explanations
       routes (the KServe server has the same): ordinary reviews (JSON and text/plain), a share of
       ``novel`` ones (100 random words never seen before each: spaCy's string store grows with
       every new word unless the server bounds it), a share of ``hostile`` ones (issue 11's defects
       1-3, issue 20's findings: malformed form escapes, JSON bodies that are not objects, invisible
       characters, large and oversized reviews) and of ``fuzz`` (random bytes under random content
       types). Reports lost requests, statuses by category and by hostile kind, 5xx outside the known
       ones, p50/p99, log bytes per request, and the server's RSS sampled every ``--rss-interval`` s.
chaos: imdb-explain's bulk mode (imdb_ops.chaos) sends ``--reviews`` IMDB reviews while the
       TorchServe worker, or the KServe server process, is killed with SIGKILL ``--kills`` times.

Both start their own server (imdb_ops.targets; the archive as shipped, free ports, a private
folder) and stop it by pid. Output: one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import string
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from imdb_ops import chaos, targets
from imdb_ops.targets import MODEL, RssSampler, Target

REVIEWS = (
    "A beautiful, moving film with brilliant performances. I loved every minute of it.",
    "Boring, predictable and far too long. A complete waste of time.",
    "It was a fantastic performance !",
    "One of the worst films I have ever seen. The plot made no sense.",
)
JSON, TEXT, FORM = "application/json", "text/plain", "application/x-www-form-urlencoded"
# name -> (path, body, content type): issue 11's defects 1-3, issue 20's findings, ordinary bad requests.
HOSTILE = {
    "non-ascii field name": ("predictions", '{"text": "good", "\u00e9": 1}'.encode(), JSON),
    "cr/lf field name": ("predictions", b'{"text": "good", "a\\nb": 1}', JSON),
    "emoji field name": ("predictions", '{"text": "good", "\U0001f600": 1}'.encode(), JSON),
    "lone surrogate": ("predictions", b'{"text": "good \\ud800 movie"}', JSON),
    "5,000-digit n_steps": ("explanations", b'{"text": "good movie", "n_steps": ' + b"9" * 5000 + b"}", JSON),
    "2,000 punctuation": ("predictions", ("!" * 2000).encode(), TEXT),
    "invalid utf-8": ("predictions", b"\xff\xfe review", "application/octet-stream"),
    "empty body": ("predictions", b"", TEXT),
    "text not a string": ("predictions", b'{"text": 5}', JSON),
    "form escape text=good%": ("predictions", b"text=good%", FORM),
    "form escape text=%ZZ": ("predictions", b"text=%ZZ", FORM),
    "json not an object ]": ("predictions", b"good movie]", JSON),
    "json a string": ("predictions", b'"just a string"', JSON),
    "zero-width spaces": ("predictions", "\u200b\u200b\u200b".encode(), TEXT),
    "20 NUL bytes": ("predictions", b"\x00" * 20, TEXT),
    "review over max_chars": ("predictions", b"a" * 100_001, TEXT),
}
# Large reviews of unseen words, explained (the hostile probe's RSS 463 -> 753 MB): generated per request.
LARGE = "99,000 chars of new words"
# TorchServe's frontend decodes form bodies before any code of ours runs and answers a malformed
# one (a bad % escape, "=x") 500 with this exception's name: the frontend's, README "Content types".
FRONTEND_FORM_500 = "ErrorDataDecoderException"
FUZZ_TYPES = (JSON, TEXT, FORM, "application/octet-stream", "")


def words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choices(string.ascii_lowercase, k=10)) for _ in range(n))


def ordinary(rng: random.Random) -> tuple[str, str, bytes, str]:
    text = rng.choice(REVIEWS)
    kind = rng.choice(("predictions", "predictions", "explanations"))
    if rng.random() < 0.3:
        return "ordinary", kind, text.encode(), TEXT
    return "ordinary", kind, json.dumps({"text": text}).encode(), JSON


def novel(rng: random.Random) -> tuple[str, str, bytes, str]:
    kind = rng.choice(("predictions", "predictions", "explanations"))
    return "novel", kind, json.dumps({"text": words(rng, 100)}).encode(), JSON


def hostile(rng: random.Random) -> tuple[str, str, bytes, str]:
    name = rng.choice([*HOSTILE, LARGE])
    if name == LARGE:
        return LARGE, "explanations", words(rng, 9000).encode(), TEXT
    return (name, *HOSTILE[name])


def fuzz(rng: random.Random) -> tuple[str, str, bytes, str]:
    body = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 200)))
    return "fuzz", rng.choice(("predictions", "explanations")), body, rng.choice(FUZZ_TYPES)


def plan(n: int, shares: dict, seed: int = 0) -> list[tuple[str, str, bytes, str]]:
    """``n`` requests (name, path, body, content type); ``shares``: hostile, novel, fuzz fractions."""
    rng = random.Random(seed)
    kinds = [(shares["hostile"], hostile), (shares["novel"], novel), (shares["fuzz"], fuzz)]
    calls = []
    for _ in range(n):
        draw, make = rng.random(), ordinary
        for share, maker in kinds:
            if draw < share:
                make = maker
                break
            draw -= share
        calls.append(make(rng))
    return calls


def category(name: str) -> str:
    return "hostile" if name in HOSTILE or name == LARGE else name


class Client:
    """One keep-alive session per thread; ``send`` gives (status, seconds): -1 when no answer came,
    -500 for TorchServe's frontend refusing a form body (FRONTEND_FORM_500)."""

    def __init__(self, target: Target) -> None:
        self.base, self.auth = target.url, target.headers()
        self.local = threading.local()

    def send(self, path: str, body: bytes, content_type: str, timeout: float = 120) -> tuple[int, float]:
        session = getattr(self.local, "session", None) or requests.Session()
        self.local.session = session
        headers = {**self.auth, **({"Content-Type": content_type} if content_type else {})}
        started = time.perf_counter()
        try:
            r = session.post(f"{self.base}/{path}/{MODEL}", data=body, headers=headers, timeout=timeout)
            frontend = r.status_code == 500 and content_type == FORM and FRONTEND_FORM_500 in r.text
            return -500 if frontend else r.status_code, time.perf_counter() - started
        except requests.RequestException:
            return -1, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def tally(calls: list, results: list[tuple[int, float]]) -> dict:
    """Statuses by category and by hostile kind ("500 frontend": FRONTEND_FORM_500)."""
    by: dict[str, dict[str, int]] = {}
    for (name, *_), (status, _) in zip(calls, results):
        label = "500 frontend" if status == -500 else str(status)
        for key in {category(name), name}:
            by.setdefault(key, {})[label] = by.get(key, {}).get(label, 0) + 1
    return {"by_category": by}


def soak(target: Target, n: int, concurrency: int, shares: dict, interval: float = 10.0, seed: int = 0) -> dict:
    calls = plan(n, shares, seed)
    client = Client(target)
    logs_before = target.log_bytes()
    with RssSampler(target, interval) as rss, ThreadPoolExecutor(concurrency) as pool:
        started = time.time()
        results = list(pool.map(lambda call: client.send(*call[1:]), calls))
        wall = time.time() - started
    statuses = [500 if status == -500 else status for status, _ in results]
    ok = [seconds for status, seconds in results if status == 200]
    return {
        "server": target.server,
        "requests": n,
        "concurrency": concurrency,
        "shares": shares,
        "lost": statuses.count(-1),
        "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
        "5xx": sum(s >= 500 for s in statuses),
        "5xx_frontend_form_decoder": sum(status == -500 for status, _ in results),
        # The run's verdict: 5xx or no answer other than the frontend's form refusals.
        "unexpected_5xx_or_lost": sum(s >= 500 or s == -1 for s, _ in results),
        **tally(calls, results),
        "seconds": round(wall, 1),
        "per_s": round(n / wall, 1),
        "p50_ms_ok": round(percentile(ok, 0.5) * 1000, 1),
        "p99_ms_ok": round(percentile(ok, 0.99) * 1000, 1),
        "rss": rss.report(),
        "restarts": len(target.restarts),
        "log_bytes_per_request": round((target.log_bytes() - logs_before) / n, 1),
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("soak", "chaos"))
    p.add_argument("--server", choices=targets.SERVERS, default="torchserve")
    p.add_argument("--requests", type=int, default=20_000, help="soak: requests")
    p.add_argument("--concurrency", type=int, help="requests in flight (soak 16; chaos: the client's, 2)")
    p.add_argument("--hostile", type=float, default=0.05, help="soak: share of hostile requests")
    p.add_argument("--novel", type=float, default=0.2, help="soak: share of reviews of unseen words")
    p.add_argument("--fuzz", type=float, default=0.02, help="soak: share of random bodies")
    p.add_argument("--rss-interval", type=float, default=10.0, help="soak: seconds between RSS samples")
    p.add_argument("--reviews", type=int, default=5000, help="chaos: IMDB reviews through imdb-explain")
    p.add_argument("--kills", type=int, default=3, help="chaos: kill -9 this many times")
    p.add_argument("--retries", type=int, default=5, help="chaos: imdb-explain --retries")
    p.add_argument("--restart-delay", type=float, default=0.0, help="chaos, kserve: seconds before the restart")
    return p


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    with targets.started(a.server, a.restart_delay) as target:
        if a.mode == "soak":
            shares = {"hostile": a.hostile, "novel": a.novel, "fuzz": a.fuzz}
            result = soak(target, a.requests, a.concurrency or 16, shares, a.rss_interval)
        else:
            result = chaos.chaos(target, chaos.imdb_reviews(a.reviews), a.kills, a.retries, a.concurrency or 2)
    result["load_average"] = os.getloadavg()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
