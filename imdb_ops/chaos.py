"""kill -9 under the client's bulk mode (``make chaos``; docs/reliability.md).

imdb-explain (``python -m imdb_client.cli``, the shipped client unchanged) explains ``n`` IMDB
reviews from a .jsonl file through the target server in bulk (64 reviews a KServe v1 request,
``concurrency`` requests in flight, ``--jsonl`` output, ``--retries``). When its output has passed
1/(kills+1), 2/(kills+1), ... of the reviews, the TorchServe worker (or the KServe server's process,
started again as a pod's container is) gets SIGKILL, and a probe sends one prediction after another
until one is answered 200: the recovery time (kill to the next 200, from the new worker or process).

Reported: reviews missing from the output, failed (an error object in place of the answer) and
answered, accuracy over the labelled ones, and the client's own summary: its retries by cause.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from imdb_ops.targets import MODEL, Target
from imdb_training import data

SUMMARY = re.compile(r"(\d+) review\(s\), (\d+) failed")
RETRIES = re.compile(r"; (\d+) retr(?:y|ies) \(([^)]*)\)")
SENTENCES = (
    ("pos", "A beautiful, moving film with brilliant performances."),
    ("pos", "I loved every minute of it and would watch it again."),
    ("neg", "Boring, predictable and far too long."),
    ("neg", "One of the worst films I have ever seen; the plot made no sense."),
)


def imdb_reviews(n: int) -> list[dict]:
    """``n`` reviews of the IMDB test set (``imdb_training.data``: ../shared, data/ or Stanford's),
    neg and pos alternating in the data's file-name order, with their labels."""
    test = data.load(data.locate(), splits=("test",))["test"]
    by_label: dict[int, list[str]] = {0: [], 1: []}
    for text, label in zip(test.texts, test.labels):
        by_label[label].append(text)
    pairs = [duo for pair in zip(by_label[0], by_label[1]) for duo in zip(("neg", "pos"), pair)]
    return [{"text": text, "label": label} for label, text in pairs[:n]]


def synthetic_reviews(n: int) -> list[dict]:
    """Labelled reviews of 2-4 sentences of one polarity, each numbered so that no two are equal
    (the quick tests: no data set to read)."""
    out = []
    for i in range(n):
        label, _ = SENTENCES[i % len(SENTENCES)]
        same = [s for lbl, s in SENTENCES if lbl == label]
        out.append({"text": f"Review {i}. " + " ".join(same * (1 + i % 2)), "label": label})
    return out


def client_command(target: Target, reviews: Path, retries: int, concurrency: int) -> tuple[list[str], dict]:
    """The imdb-explain command line and its environment (the token in IMDB_TOKEN, not in ps)."""
    cmd = [sys.executable, "-m", "imdb_client.cli", "--jsonl", "--url", target.url]
    cmd += ["--retries", str(retries), "--concurrency", str(concurrency), str(reviews)]
    env = {k: v for k, v in os.environ.items() if k not in ("IMDB_URL", "IMDB_TOKEN")}
    return cmd, env | ({"IMDB_TOKEN": target.token} if target.token else {})


class Progress:
    """Answers written so far to the client's --jsonl output (newlines counted as they arrive)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.lines = path, 0, 0

    def count(self) -> int:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        self.offset += len(chunk)
        self.lines += chunk.count(b"\n")
        return self.lines


def wait_for(progress: Progress, client: subprocess.Popen, lines: int) -> bool:
    """True once the output has ``lines`` answers; False if the client exits first."""
    while progress.count() < lines:
        if client.poll() is not None:
            return False
        time.sleep(0.05)
    return True


def kill_and_recover(target: Target, timeout: float = 120) -> dict:
    """SIGKILL, then one prediction after another until one is answered 200: seconds from the kill."""
    session = requests.Session()
    body = json.dumps({"text": "It was a fantastic performance !"})
    headers = {**target.headers(), "Content-Type": "application/json"}
    pid, killed, statuses = target.kill(), time.time(), []
    while time.time() - killed < timeout:
        try:
            status = session.post(
                f"{target.url}/predictions/{MODEL}", data=body, headers=headers, timeout=60
            ).status_code
        except requests.RequestException:
            status = -1
        statuses.append(status)
        if status == 200:
            break
        time.sleep(0.05)
    recovered = round(time.time() - killed, 2) if statuses[-1] == 200 else None
    return {"killed_pid": pid, "recovery_s": recovered, "probe_statuses": sorted(set(statuses))}


def read_output(path: Path, items: list[dict]) -> dict:
    """Missing, failed, answered, duplicated and correctly labelled reviews of the --jsonl output."""
    seen: dict[int, dict] = {}
    lines = 0
    for line in path.read_text().splitlines():
        record = json.loads(line)
        seen[record["index"]] = record["answer"]
        lines += 1
    failed = sum("label" not in answer for answer in seen.values())
    correct = sum(answer.get("label") == items[i]["label"] for i, answer in seen.items() if i < len(items))
    return {
        "reviews": len(items),
        "missing": len(set(range(len(items))) - set(seen)),
        "failed": failed,
        "answered": len(seen) - failed,
        "duplicated_lines": lines - len(seen),
        "accuracy": round(correct / len(items), 4) if items else None,
    }


def retried(line: str) -> dict[str, int]:
    """'... ; 3 retries (507: 2, connection error: 1)' -> {"507": 2, "connection error": 1}."""
    found = RETRIES.search(line)
    causes = [part.rsplit(": ", 1) for part in found.group(2).split(", ")] if found else []
    return {cause: int(n) for cause, n in causes}


def client_summary(stderr: str) -> dict:
    """The client's closing summary line (stderr): reviews, failed, retries by cause; and the retry
    lines it printed one by one, and its error line if it gave up."""
    lines = stderr.splitlines()
    line = next((text for text in reversed(lines) if SUMMARY.search(text)), "")
    counts = [int(n) for n in SUMMARY.search(line).groups()] if line else [None, None]
    causes = retried(line)
    return {
        "line": line or None,
        "reviews": counts[0],
        "failed": counts[1],
        "retries": sum(causes.values()),
        "retried": causes,
        "retry_lines": stderr.count("; retry "),
        "error": next((text for text in lines if text.startswith("imdb-explain: error:")), None),
    }


def chaos(target: Target, items: list[dict], kills: int, retries: int = 5, concurrency: int = 2) -> dict:
    with tempfile.TemporaryDirectory(prefix="imdb_chaos_") as tmp:
        reviews, out, err = Path(tmp) / "reviews.jsonl", Path(tmp) / "out.jsonl", Path(tmp) / "err.txt"
        reviews.write_text("".join(json.dumps(item) + "\n" for item in items))
        started = time.time()
        with out.open("wb") as stdout, err.open("wb") as stderr:
            cmd, env = client_command(target, reviews, retries, concurrency)
            # cwd: a folder without key_file.json (the client would read the repository's).
            client = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, cwd=tmp, env=env)
            progress, rounds = Progress(out), []
            for k in range(1, kills + 1):
                if wait_for(progress, client, len(items) * k // (kills + 1)):
                    rounds.append({"after_reviews": progress.lines, **kill_and_recover(target)})
            returncode = client.wait(timeout=1800)
        seconds = time.time() - started
        output, summary = read_output(out, items), client_summary(err.read_text(errors="replace"))
    return {
        "server": target.server,
        "client": {"bulk": 64, "concurrency": concurrency, "retries": retries, "exit": returncode},
        "seconds": round(seconds, 1),
        "reviews_per_s": round(len(items) / seconds, 1),
        **output,
        "client_summary": summary,
        "kills": rounds,
        "restarts": [{k: v for k, v in r.items() if k != "died"} for r in target.restarts],
    }
