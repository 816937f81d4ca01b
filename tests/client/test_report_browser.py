"""The HTML report of REAL explanations (the real handler, in this process) opened in headless
Chromium: its DOM holds Captum's columns, the header (model, version, server) and the summary, every
token as text, a hostile review stays text, and the screenshot is not blank. Chromium is
apt-installed when missing; the tests skip when that is not possible (see docs/client.md)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from handler.inprocess import answer_texts
from imdb_bench.screenshots import FLAGS  # the README pictures run Chromium the same way
from imdb_client.items import Item
from imdb_client.report import COLUMNS, Source, render_html

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "model_store" / "artifacts"

REVIEWS = [
    Item("It was a fantastic performance, the best film I have seen this year!", "pos/1.txt", "pos"),
    Item("A horrible, boring movie. I want my two hours back.", "neg/2.txt", "neg"),
    Item("<script>alert(1)</script> not bad <b>at all</b>", "hostile", None),
]


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _skip(reason: str) -> None:
    """Skip where Chromium cannot be had, except in CI ($CI set, as CI services do): there a skip
    would hide a broken report, so it fails."""
    if os.environ.get("CI"):
        pytest.fail(f"CI needs headless Chromium (apt-get install chromium): {reason}")
    pytest.skip(reason)


def _install_chromium() -> str:
    """apt-get install Debian's `chromium` (as root) and return its path, or skip."""
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        _skip("chromium is not installed and apt-get as root is not available")
    try:
        for cmd, limit in (
            (["apt-get", "update", "-q"], 300),
            (["apt-get", "install", "-y", "-q", "chromium"], 900),
        ):
            done = _run(cmd, limit)
            if done.returncode != 0:
                _skip(f"{' '.join(cmd)} failed: {done.stderr[-500:]}")
    except (subprocess.TimeoutExpired, OSError) as err:
        _skip(f"could not install chromium: {err}")
    exe = shutil.which("chromium")
    if exe is None:
        _skip("chromium still not on PATH after apt-get install")
    return exe


@pytest.fixture(scope="session")
def chromium(tmp_path_factory) -> list[str]:
    """The command prefix of a runnable headless Chromium; installs Debian's `chromium` if missing."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or _install_chromium()
    prefix = [exe, *FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]
    try:
        probe = _run(prefix + ["--dump-dom", "data:text/html,<p>chromium-ok</p>"], 90)
    except (subprocess.TimeoutExpired, OSError) as err:
        _skip(f"chromium does not run: {err}")
    if "chromium-ok" not in probe.stdout:
        _skip(f"chromium does not run headless here: {probe.stderr[-500:]}")
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
    source = Source("imdb_sentiment", f"in-process: {model_dir}", None)
    path.write_text(render_html(list(zip(REVIEWS, results)), source), encoding="utf-8")
    return path, results


class Cells(HTMLParser):
    """The text of every th, td and dd element, in document order, as (tag, text)."""

    TAGS = {"th", "td", "dd", "dt"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.cells, self._open = [], []

    def handle_starttag(self, tag, attrs):
        if tag in self.TAGS:
            self._open.append(len(self.cells))
            self.cells.append((tag, ""))

    def handle_endtag(self, tag):
        if tag in self.TAGS and self._open:
            self._open.pop()

    def handle_data(self, data):
        if self._open:
            tag, text = self.cells[self._open[-1]]
            self.cells[self._open[-1]] = (tag, text + data)


def texts_of(cells: list[tuple[str, str]], tag: str) -> list[str]:
    return [text for t, text in cells if t == tag]


def assert_the_header_names_model_version_and_server(cells: list[tuple[str, str]], model_dir: Path) -> None:
    source = dict(zip(texts_of(cells, "dt"), texts_of(cells, "dd")))
    assert source["Model"] == "imdb_sentiment" and source["Server"] == f"in-process: {model_dir}"
    assert "Version" in source


def assert_the_summary_counts_the_correct_labels(dom: str, results: list[dict]) -> None:
    labelled = [(r.label, a["label"]) for r, a in zip(REVIEWS, results) if r.label]
    correct = sum(t == p for t, p in labelled)
    accuracy = re.search(r'id="accuracy">([^<]+)</b> \((\d+) of (\d+) labelled', dom)
    assert accuracy and accuracy.groups() == (f"{correct / len(labelled):.1%}", str(correct), str(len(labelled)))


def assert_a_row_shows_its_answer(row: list[str], review: Item, answer: dict) -> None:
    assert row[1] == (review.label or "–") and row[2].startswith(answer["label"])
    assert row[3] == "pos"  # the attribution label: the target is the logit of pos
    assert float(re.match(r"-?\d+\.\d+", row[4]).group()) == pytest.approx(sum(answer["attributions"]), abs=0.006)


def test_dom_has_captums_columns_the_header_and_the_summary(chromium, report, model_dir):
    path, results = report
    dom = _run(chromium + ["--dump-dom", path.as_uri()], 90).stdout
    parsed = Cells()
    parsed.feed(dom)
    cells = [(tag, " ".join(text.split())) for tag, text in parsed.cells]
    headers = texts_of(cells, "th")
    assert headers[-len(COLUMNS) :] == list(COLUMNS)  # the reviews table's header row, after the confusion table's
    assert_the_header_names_model_version_and_server(cells, model_dir)
    assert_the_summary_counts_the_correct_labels(dom, results)
    width = len(COLUMNS)
    body = texts_of(cells, "td")[-width * len(REVIEWS) :]
    for k, answer in enumerate(results):
        assert_a_row_shows_its_answer(body[k * width : (k + 1) * width], REVIEWS[k], answer)


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
