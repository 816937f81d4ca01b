"""What the client explains: ``Item`` (a review text, where it came from, its true label if known)
and the readers of every input form.

Named ``Item``, not ``Review``: handler/payload.py's ``Review`` is a validated request on the server
side (text + explanation options); this is an input on the client side (text + name + true label).

Forms, one per command-line argument:
  ``-``            stdin: one review (``--stdin-lines``: one review per line)
  ``DIR``          every ``*.txt`` below it, one review each; a file in a ``pos/`` or ``neg/`` folder
                   (the aclImdb layout) has that true label
  ``FILE.csv``     a header row with a ``text`` (or ``review``) column and an optional ``label``
                   (or ``sentiment``) column
  ``FILE.jsonl``   one JSON object per line with ``text`` (or ``review``) and an optional ``label``
  other ``FILE``   one review per non-empty line
  anything else    the review text itself
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

LABELS = ("neg", "pos")
TEXT_KEYS = ("text", "review")
LABEL_KEYS = ("label", "sentiment")
# Spellings of the two labels found in IMDB exports: the words, their long forms, and 0/1.
_LABEL_ALIASES = {
    "neg": "neg",
    "negative": "neg",
    "0": "neg",
    "pos": "pos",
    "positive": "pos",
    "1": "pos",
}


class InputError(ValueError):
    """An input that cannot be read; the message names the file and line."""


@dataclass
class Item:
    text: str
    name: str = ""
    label: str | None = None  # the true label, when known


def normalize_label(value: object, where: str) -> str | None:
    """'pos'/'positive'/1 -> 'pos', 'neg'/'negative'/0 -> 'neg', empty/None -> None; else an InputError."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):  # json true/false is not a label
        raise InputError(f"{where}: label {value!r} is not one of pos, neg, positive, negative, 1, 0")
    key = str(value).strip().lower()
    if key not in _LABEL_ALIASES:
        raise InputError(f"{where}: label {value!r} is not one of pos, neg, positive, negative, 1, 0")
    return _LABEL_ALIASES[key]


def _record(row: dict, where: str, default_label: str | None) -> Item:
    """One CSV row or JSON object -> Item, by the first text and label keys it has."""
    text_key = next((k for k in TEXT_KEYS if k in row), None)
    if text_key is None or not isinstance(row[text_key], str):
        raise InputError(f"{where}: needs a string field {' or '.join(map(repr, TEXT_KEYS))}")
    label_key = next((k for k in LABEL_KEYS if k in row), None)
    label = normalize_label(row[label_key], where) if label_key else None
    return Item(row[text_key], where, label or default_label)


def read_csv(path: Path, label: str | None = None) -> list[Item]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not set(TEXT_KEYS) & set(reader.fieldnames):
            raise InputError(f"{path}: the header row needs a 'text' or 'review' column, got {reader.fieldnames}")
        # reader.line_num is the physical line after the row: quoted reviews may span several lines.
        return [_record(row, f"{path}:{reader.line_num}", label) for row in reader]


def read_jsonl(path: Path, label: str | None = None) -> list[Item]:
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{n}: not JSON: {err.msg}") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        items.append(_record(row, f"{path}:{n}", label))
    return items


def read_lines(path: Path, label: str | None = None) -> list[Item]:
    lines = [(n, line) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    file_label = path.parent.name if path.parent.name in LABELS else label
    return [Item(line, f"{path}:{n}" if len(lines) > 1 else str(path), file_label) for n, line in lines]


def read_folder(path: Path, label: str | None = None) -> list[Item]:
    files = sorted(path.rglob("*.txt"))
    if not files:
        raise InputError(f"no .txt files in folder {path}")
    return [
        Item(f.read_text(encoding="utf-8"), str(f), f.parent.name if f.parent.name in LABELS else label) for f in files
    ]


def read_stdin(stream: TextIO, label: str | None, lines: bool) -> list[Item]:
    text = stream.read()
    if not lines:
        return [Item(text, "stdin", label)]
    return [Item(line, f"stdin:{n}", label) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


_READERS = {".csv": read_csv, ".jsonl": read_jsonl, ".ndjson": read_jsonl}


def _read_path(path: Path, label: str | None) -> list[Item]:
    try:
        if path.is_dir():
            return read_folder(path, label)
        return _READERS.get(path.suffix.lower(), read_lines)(path, label)
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text (byte {err.start}); reviews are read as UTF-8") from None


def read_items(
    sources: Iterable[str], label: str | None = None, stdin: TextIO | None = None, stdin_lines: bool = False
) -> list[Item]:
    """Items from the command-line arguments, in order (see the module docstring for the forms)."""
    items: list[Item] = []
    for source in sources:
        path = Path(source)
        if source == "-":
            items += read_stdin(stdin or sys.stdin, label, stdin_lines)
        elif path.is_dir() or path.is_file():
            items += _read_path(path, label)
        else:
            items.append(Item(source, "", label))
    return items
