"""Slow reliability runs against a real TorchServe on loopback (docs/reliability.md).

usage: python scripts/soak.py soak  [--requests 5000] [--concurrency 16] [--hostile 0.05]
       python scripts/soak.py chaos [--kills 3] [--clients 16]

soak:  mixed requests (predictions and explanations, JSON and text/plain) with a share of hostile
       ones, among them issue 11's defects 1-3 (non-ASCII and CR/LF field and input names, a lone
       surrogate, a 5,000-digit n_steps); reports lost requests, statuses, p50/p99, the server's RSS
       before and after, the worker PID before and after, and log bytes per request. Punctuation
       runs (defect 2) are sent at 2,000 characters: long enough to show a quadratic tokenizer,
       short enough that an unfixed one cannot stall the run for minutes.
chaos: 16 clients send predictions without pause; the worker is killed with SIGKILL ``--kills``
       times; reports per kill the failed requests (at most one batch should fail), the recovery
       time (kill to the next 200 answered by the new worker) and whether any client hung.

Both start their own server (config.properties on free ports, a private working directory, the
archive as shipped) and stop it by pid. Output: one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from imdb_ops import build_mar, serve

REPO = Path(__file__).resolve().parent.parent
MODEL = "imdb_sentiment"
REVIEWS = (
    "A beautiful, moving film with brilliant performances. I loved every minute of it.",
    "Boring, predictable and far too long. A complete waste of time.",
    "It was a fantastic performance !",
    "One of the worst films I have ever seen. The plot made no sense.",
)
# (path, body, content type): issue 11's defects 1-3 and ordinary bad requests.
HOSTILE = (
    ("predictions", '{"text": "good", "\u00e9": 1}'.encode(), "application/json"),
    ("predictions", b'{"text": "good", "a\\nb": 1}', "application/json"),
    ("predictions", '{"text": "good", "\U0001f600": 1}'.encode(), "application/json"),
    ("predictions", b'{"text": "good \\ud800 movie"}', "application/json"),
    ("explanations", b'{"text": "good movie", "n_steps": ' + b"9" * 5000 + b"}", "application/json"),
    ("predictions", ("!" * 2000).encode(), "text/plain"),
    ("predictions", b"\xff\xfe review", "application/octet-stream"),
    ("predictions", b"", "text/plain"),
    ("predictions", b'{"text": 5}', "application/json"),
)


def ordinary(rng: random.Random) -> tuple[str, bytes, str]:
    text = rng.choice(REVIEWS)
    kind = rng.choice(("predictions", "predictions", "explanations"))
    if rng.random() < 0.3:
        return kind, text.encode(), "text/plain"
    return kind, json.dumps({"text": text}).encode(), "application/json"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def rss_mb(pids: list[int]) -> float:
    """Resident memory of the JVM and its workers, MB (from /proc)."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
        except (OSError, StopIteration):
            pass
    return round(total / 1024, 1)


def log_bytes(workdir: Path) -> int:
    return sum(p.stat().st_size for p in (workdir / "logs").glob("*") if p.is_file())


def workers(server: serve.Server) -> list[int]:
    keys = server.keys()
    r = requests.get(
        f"{server.management}/models/{MODEL}", headers={"Authorization": f"Bearer {keys['management']}"}, timeout=10
    )
    return [w["pid"] for m in r.json() for w in m.get("workers", []) if w.get("status") == "READY"]


class Client:
    def __init__(self, server: serve.Server) -> None:
        self.base = server.inference
        self.auth = {"Authorization": f"Bearer {server.keys()['inference']}"}
        self.local = threading.local()

    def send(self, kind: str, body: bytes, content_type: str, timeout: float = 120) -> tuple[int, float]:
        """(status or -1 when no answer came back, seconds)."""
        session = getattr(self.local, "session", None) or requests.Session()
        self.local.session = session
        started = time.perf_counter()
        try:
            r = session.post(
                f"{self.base}/{kind}/{MODEL}",
                data=body,
                headers={**self.auth, "Content-Type": content_type},
                timeout=timeout,
            )
            return r.status_code, time.perf_counter() - started
        except requests.RequestException:
            return -1, time.perf_counter() - started


def soak(server: serve.Server, n: int, concurrency: int, hostile: float, seed: int = 0) -> dict:
    rng = random.Random(seed)
    plan = [rng.choice(HOSTILE) if rng.random() < hostile else ordinary(rng) for _ in range(n)]
    client = Client(server)
    procs = [server.pid, *serve._children(server.pid)]
    before = {"rss_mb": rss_mb(procs), "workers": workers(server), "log_bytes": log_bytes(server.workdir)}
    started = time.time()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda call: client.send(*call), plan))
    wall = time.time() - started
    procs = [server.pid, *serve._children(server.pid)]
    statuses: dict[str, int] = {}
    for status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    hostile_5xx = sum(1 for call, (status, _) in zip(plan, results) if call in HOSTILE and status >= 500)
    ok = [s for status, s in results if status == 200]
    return {
        "requests": n,
        "concurrency": concurrency,
        "hostile": sum(call in HOSTILE for call in plan),
        "lost": statuses.get("-1", 0),
        "statuses": statuses,
        "5xx": sum(v for k, v in statuses.items() if k.startswith("5")),
        "5xx_from_hostile": hostile_5xx,
        "per_s": round(n / wall, 1),
        "p50_ms_ok": round(percentile(ok, 0.5) * 1000, 1),
        "p99_ms_ok": round(percentile(ok, 0.99) * 1000, 1),
        "rss_mb": {"before": before["rss_mb"], "after": rss_mb(procs)},
        "worker_pids": {"before": before["workers"], "after": workers(server)},
        "log_bytes_per_request": round((log_bytes(server.workdir) - before["log_bytes"]) / n, 1),
    }


def chaos(server: serve.Server, kills: int, clients: int, settle: float = 5.0) -> dict:
    client = Client(server)
    log: list[tuple[float, int, float]] = []  # (end time, status, seconds)
    stop = threading.Event()

    def loop(k: int) -> None:
        body = json.dumps({"text": REVIEWS[k % len(REVIEWS)]}).encode()
        while not stop.is_set():
            status, seconds = client.send("predictions", body, "application/json", timeout=90)
            log.append((time.time(), status, seconds))

    threads = [threading.Thread(target=loop, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    time.sleep(settle)
    rounds = []
    for _ in range(kills):
        (victim,) = workers(server)[:1]
        killed = time.time()
        os.kill(victim, signal.SIGKILL)
        while not (fresh := [p for p in workers(server) if p != victim]) and time.time() - killed < 120:
            time.sleep(0.1)
        ready = time.time()
        while not any(t > ready and s == 200 for t, s, _ in log[-clients * 4 :]) and time.time() - ready < 60:
            time.sleep(0.05)
        back = time.time()
        time.sleep(settle)
        window = [(t, s, d) for t, s, d in log if killed <= t <= back + settle]
        rounds.append(
            {
                "killed_pid": victim,
                "new_pid": fresh[0] if fresh else None,
                "failed": sum(1 for _, s, _ in window if s != 200),
                "statuses": sorted({s for _, s, _ in window}),
                "recovery_s": round(back - killed, 2),
            }
        )
    stop.set()
    for t in threads:
        t.join(timeout=120)
    return {
        "clients": clients,
        "requests": len(log),
        "hung_clients": sum(t.is_alive() for t in threads),
        "slowest_s": round(max(d for _, _, d in log), 2),
        "kills": rounds,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("soak", "chaos"))
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--hostile", type=float, default=0.05)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--clients", type=int, default=16)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix=f"imdb_{a.mode}_") as tmp:
        d = Path(tmp)
        store = d / "store"
        build_mar.build(REPO / "model_store" / "artifacts", store)
        server = serve.start(d / "work", serve.isolated_config(d / "config.properties"), store, timeout=300)
        try:
            if a.mode == "soak":
                result = soak(server, a.requests, a.concurrency, a.hostile)
            else:
                result = chaos(server, a.kills, a.clients)
        finally:
            serve.stop(server)
    result["load_average"] = os.getloadavg()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
