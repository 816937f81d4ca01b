"""The HTML report of REAL explanations (the real handler, in this process) opened in headless
Chromium: its DOM holds every token as text, a hostile review stays text, and the screenshot is
not blank. Chromium is apt-installed when missing; the tests skip when that is not possible."""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from handler.inprocess import answer_texts
from imdb_client.client import Review, render_html

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "model_store" / "artifacts"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REVIEWS = [
    Review("It was a fantastic performance, the best film I have seen this year!", "pos/1.txt", "pos"),
    Review("A horrible, boring movie. I want my two hours back.", "neg/2.txt", "neg"),
    Review("<script>alert(1)</script> not bad <b>at all</b>", "hostile", None),
]


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def chromium(tmp_path_factory) -> list[str]:
    """The command prefix of a runnable headless Chromium; installs Debian's `chromium` if missing."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if shutil.which("apt-get") is None or os.geteuid() != 0:
            pytest.skip("chromium is not installed and apt-get as root is not available")
        try:
            for cmd, limit in (
                (["apt-get", "update", "-q"], 300),
                (["apt-get", "install", "-y", "-q", "chromium"], 900),
            ):
                done = _run(cmd, limit)
                if done.returncode != 0:
                    pytest.skip(f"{' '.join(cmd)} failed: {done.stderr[-500:]}")
        except (subprocess.TimeoutExpired, OSError) as err:
            pytest.skip(f"could not install chromium: {err}")
        exe = shutil.which("chromium")
        if exe is None:
            pytest.skip("chromium still not on PATH after apt-get install")
    prefix = [exe, *FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]
    try:
        probe = _run(prefix + ["--dump-dom", "data:text/html,<p>chromium-ok</p>"], 90)
    except (subprocess.TimeoutExpired, OSError) as err:
        pytest.skip(f"chromium does not run: {err}")
    if "chromium-ok" not in probe.stdout:
        pytest.skip(f"chromium does not run headless here: {probe.stderr[-500:]}")
    return prefix


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """The shipped model when it is there, else a tiny random one (same files, same handler)."""
    if (SHIPPED / "weights.safetensors").exists():
        return SHIPPED
    import torch

    from handler.model import ModelConfig, SentimentCNN, save_artifacts
    from handler.text import Vocab, tokenize

    directory = tmp_path_factory.mktemp("tiny-model")
    vocab = Vocab.build(tokenize([r.text for r in REVIEWS]), 200)
    vocab.save(directory)
    torch.manual_seed(0)
    save_artifacts(SentimentCNN(ModelConfig(len(vocab), embedding_dim=16, n_filters=8)), directory)
    return directory


@pytest.fixture(scope="session")
def report(model_dir, tmp_path_factory) -> tuple[Path, list[dict]]:
    results = answer_texts([r.text for r in REVIEWS], model_dir)
    assert all("tokens" in r for r in results), results
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(render_html(list(zip(REVIEWS, results))), encoding="utf-8")
    return path, results


class Marks(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.marks, self.tags, self.inside_marks, self._in_mark = [], [], [], False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if self._in_mark:
            self.inside_marks.append(tag)
        if tag == "mark":
            self._in_mark = True
            self.marks.append("")

    def handle_endtag(self, tag):
        self._in_mark = self._in_mark and tag != "mark"

    def handle_data(self, data):
        if self._in_mark:
            self.marks[-1] += data


def test_dom_has_every_token_and_no_injected_markup(chromium, report):
    path, results = report
    dom = _run(chromium + ["--dump-dom", path.as_uri()], 90).stdout
    parsed = Marks()
    parsed.feed(dom)
    shown = parsed.marks[3:]  # the first three marks are the legend
    assert shown == [t for r in results for t in r["tokens"]]
    assert "script" in shown and "alert(1)</script" in shown  # the hostile review, as text
    assert "script" not in parsed.tags and parsed.inside_marks == []  # tokens are text, never markup


def test_screenshot_is_not_blank(chromium, report, tmp_path):
    from PIL import Image

    path, _ = report
    png = tmp_path / "report.png"
    _run(chromium + [f"--screenshot={png}", "--window-size=1200,800", path.as_uri()], 90)
    assert png.exists() and png.stat().st_size > 0
    with Image.open(png) as image:
        assert image.size == (1200, 800)
        pixels = image.convert("RGB").getdata()
        colours = set(pixels)
    assert len(colours) > 1
    assert any(max(c) - min(c) > 60 for c in colours), "no green or red highlight in the screenshot"
