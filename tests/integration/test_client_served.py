"""imdb-explain against a real TorchServe (the shipped model, config.properties on free loopback
ports, its own working directory, stopped by pid): bulk KServe v1 requests answer exactly as one
plain request per review, per-review errors stay per review, --n-steps, --version and --predict
reach the server as meant, and a worker killed mid-run costs no review (the client retries)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from imdb_client.cli import main
from imdb_ops import build_mar, serve
from imdb_training.train import TUTORIAL_SENTENCES
from tests.helpers import SHIPPED

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("java") is None, reason="TorchServe needs java on PATH"),
]

REVIEWS = [
    *TUTORIAL_SENTENCES,
    ("A beautiful, moving film with brilliant performances.<br /><br />I loved every minute of it.", "pos"),
    ("Boring, predictable and far too long. A complete waste of time. " * 20, "neg"),
    ("   ", "neg"),  # empty: the server's 400, answered inline
]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[serve.Server]:
    d = tmp_path_factory.mktemp("client_served")
    build_mar.build(SHIPPED, d / "store")
    config = serve.isolated_config(d / "config.properties")
    with serve.running(d / "work", config, d / "store", timeout=180) as running:
        yield running


@pytest.fixture(scope="module")
def reviews_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "reviews.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(REVIEWS)
    return path


def run(server: serve.Server, capsys, *args: str) -> tuple[int, list[dict], str]:
    code = main(["--url", server.inference, "--key-file", str(server.key_file), "--jsonl", *args])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def assert_bulk_line_equals_single(b: dict, s: dict, label: str) -> None:
    """One review's output line from a bulk request equals the one from its own request: the same
    400, or the same label (the true one), tokens and attributions."""
    assert b["index"] == s["index"] and b["true_label"] == label
    if "code" in s["answer"]:
        assert b["answer"]["code"] == s["answer"]["code"] == 400
        return
    assert b["answer"]["label"] == s["answer"]["label"] == label
    assert b["answer"]["tokens"] == s["answer"]["tokens"]
    assert b["answer"]["attributions"] == pytest.approx(s["answer"]["attributions"], abs=1e-5)


def test_bulk_answers_equal_one_request_per_review(server, reviews_csv, capsys):
    code, bulk, err = run(server, capsys, str(reviews_csv))
    assert code == 1 and "review text is empty" in err  # the blank review, and only it, failed
    code, single, _ = run(server, capsys, "--bulk", "1", "--concurrency", "4", str(reviews_csv))
    assert code == 1 and len(bulk) == len(single) == len(REVIEWS)
    for b, s, (_, label) in zip(bulk, single, REVIEWS):
        assert_bulk_line_equals_single(b, s, label)
    assert "accuracy 100.0% on 8 labelled" in err


def test_steps_version_and_predict_reach_the_server(server, capsys):
    code, lines, _ = run(server, capsys, "--n-steps", "32", "It was a fantastic performance !", "A horrible movie")
    assert code == 0 and [a["answer"]["method"] for a in lines] == ["gausslegendre"] * 2
    assert all(a["answer"]["n_steps"] >= 32 for a in lines)
    code, lines, _ = run(server, capsys, "--version", "1.0", "Best film ever")
    assert code == 0 and lines[0]["answer"]["label"] == "pos"
    code, lines, err = run(server, capsys, "--version", "9.9", "Best film ever")
    assert code == 1 and "has no model imdb_sentiment version 9.9" in err
    code, lines, _ = run(server, capsys, "--predict", "Best film ever", "A horrible movie")
    assert code == 0 and [a["answer"]["label"] for a in lines] == ["pos", "neg"]
    assert not any("attributions" in a["answer"] for a in lines)


def worker_pids(server: serve.Server) -> list[int]:
    auth = {"Authorization": f"Bearer {server.keys()['management']}"}
    models = requests.get(f"{server.management}/models/imdb_sentiment", headers=auth, timeout=10).json()
    return [w["pid"] for m in models for w in m["workers"] if w.get("status") == "READY"]


def worker_starts(server: serve.Server) -> float:
    text = requests.get(f"{server.metrics}/metrics", timeout=10).text
    return float(re.search(r"^imdb_worker_starts_total\{[^}]*\} (\S+)$", text, re.M).group(1))


def kill_when_serving(server: serve.Server, victim: int, stop: threading.Event) -> None:
    """kill -9 the worker once the frontend has logged a few bulk requests of this run."""
    log = server.workdir / "logs" / "access_log.log"
    seen = log.read_text().count(":explain") if log.exists() else 0
    while not stop.wait(0.02):
        if log.exists() and log.read_text().count(":explain") >= seen + 3:
            os.kill(victim, signal.SIGKILL)
            return


def many_reviews(n: int) -> list[str]:
    """``n`` distinct reviews of 40 words."""
    words = "fine moving story acting plot dull brilliant awful script music".split()
    return [" ".join(words[(i * k) % len(words)] for k in range(1, 40)) + f" {i}" for i in range(n)]


def worker_starts_reaching(server: serve.Server, count: float, wait: float = 10.0) -> float:
    """The worker-start counter once it reaches ``count`` or ``wait`` seconds pass: the frontend
    adds a new worker's start once it has read its line."""
    deadline = time.time() + wait
    while worker_starts(server) < count and time.time() < deadline:
        time.sleep(0.2)
    return worker_starts(server)


def test_a_worker_killed_mid_run_costs_no_review_the_client_retries(server, tmp_path, capsys):
    # Runs last (file order): it kills this module's worker. Four 64-review requests in flight, so
    # the worker holds a batch when it dies; that batch gets 500/507, which the client sends again
    # until the restarted worker answers.
    texts = many_reviews(10_000)
    reviews = tmp_path / "reviews.txt"
    reviews.write_text("".join(t + "\n" for t in texts))
    (victim,) = worker_pids(server)
    starts = worker_starts(server)
    stop = threading.Event()
    killer = threading.Thread(target=kill_when_serving, args=(server, victim, stop))
    killer.start()
    try:
        code, lines, err = run(server, capsys, "--concurrency", "4", str(reviews))
    finally:
        stop.set()
        killer.join()
    assert code == 0, err[-2000:]
    assert len(lines) == len(texts) and not any("code" in line["answer"] for line in lines)
    assert [line["index"] for line in lines] == list(range(len(texts)))
    assert re.search(r"; \d+ retr(y|ies) \(", err), err[-2000:]  # the summary counts the retries
    assert worker_starts_reaching(server, starts + 1) == starts + 1 and worker_pids(server) != [victim]
