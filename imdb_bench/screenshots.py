"""Make the README's pictures from the shipped model: the HTML report and the terminal output.

usage: python scripts/screenshots.py [--artifacts model_store/artifacts] [--out docs/img] [--data PATH]

Reviews: six IMDB test reviews (short ones, both labels), explained in-process by the real handler
(``imdb-explain --local``). The report is screenshot by headless Chromium; the terminal output is
recorded by rich as SVG and screenshot the same way. Needs Debian's ``chromium``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from handler.inprocess import answer_texts
from imdb_client.items import Item
from imdb_client.report import Source, render_html
from imdb_client.terminal import render_terminal
from imdb_training import data as imdb_data

REPO = Path(__file__).resolve().parent.parent


FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]


def pick_reviews(data: str | None, per_label: int = 3, max_chars: int = 420) -> list[Item]:
    test = imdb_data.load(imdb_data.locate(data), splits=("test",))["test"]
    picked: list[Item] = []
    for label in (0, 1):
        short = [i for i, (t, y) in enumerate(zip(test.texts, test.labels)) if y == label and len(t) < max_chars]
        for i in short[:per_label]:
            picked.append(
                Item(test.texts[i], name=f"test/{'pos' if label else 'neg'}/#{i}", label="pos" if label else "neg")
            )
    return picked


def screenshot(page: Path, png: Path, width: int, height: int) -> None:
    exe = shutil.which("chromium") or sys.exit("chromium is needed (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                exe,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--screenshot={png}",
                f"--window-size={width},{height}",
                page.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", default=str(REPO / "model_store" / "artifacts"))
    p.add_argument("--out", default=str(REPO / "docs" / "img"))
    p.add_argument("--data", help="IMDB tarball or aclImdb folder (default: as in training)")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    reviews = pick_reviews(a.data)
    results = answer_texts([r.text for r in reviews], Path(a.artifacts))
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.html"
        source = Source("imdb_sentiment", f"in-process: {os.path.relpath(a.artifacts, REPO)}")
        report.write_text(render_html(list(zip(reviews, results)), source), encoding="utf-8")
        screenshot(report, out / "report.png", 1200, 1500)
        console = Console(record=True, width=110, force_terminal=True, highlight=False, file=open(os.devnull, "w"))
        for review, result in zip(reviews[2:5], results[2:5]):
            console.print(render_terminal(result, review, color=True))
        svg = Path(tmp) / "terminal.svg"
        console.save_svg(str(svg), title="imdb-explain")
        page = Path(tmp) / "terminal.html"
        page.write_text(f"<html><body style='margin:0;background:#fff'>{svg.read_text()}</body></html>")
        screenshot(page, out / "terminal.png", 1000, 460)
    print(f"wrote {out / 'report.png'} and {out / 'terminal.png'}")


if __name__ == "__main__":
    main()
