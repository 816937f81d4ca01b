"""Finding and reading the IMDB Large Movie Review Dataset (Maas et al., 2011).

Lookup order: an explicit path, $IMDB_DATA, ../shared/data/aclImdb_v1.tar.gz (beside the checkout),
else a download from the official Stanford address into ./data/. The tarball is read in place
(no extraction); a folder in the aclImdb layout, or a TSV of ``label<TAB>text``, works as well.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
ENV_VAR = "IMDB_DATA"
REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data" / "aclImdb_v1.tar.gz"
LABELS = {"neg": 0, "pos": 1, "unsup": -1}
_MEMBER = re.compile(r"aclImdb/(train|test)/(pos|neg|unsup)/[^/]+\.txt$")


@dataclass
class Split:
    texts: list[str]
    labels: list[int]  # 1 = pos, 0 = neg


def locate(path: str | None = None) -> Path:
    explicit = path or os.environ.get(ENV_VAR)
    if explicit:
        if not Path(explicit).exists():
            raise FileNotFoundError(f"IMDB data not found at {explicit}")
        return Path(explicit)
    if SHARED.exists():
        return SHARED
    return download(REPO / "data" / "aclImdb_v1.tar.gz")


def download(dest: Path) -> Path:
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    with urllib.request.urlopen(URL, timeout=60) as resp, open(tmp, "wb") as out:
        total = int(resp.headers.get("Content-Length", 0)) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc="download IMDB") as bar:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
    tmp.rename(dest)
    return dest


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


Row = tuple[str, int, str]  # (file or member name, label, text): a sort orders rows by that name


def load(path: Path, splits: tuple[str, ...] = ("train", "test")) -> dict[str, Split]:
    """Read the reviews of the given splits; sorted by file name, so order is stable.

    Split "unsup" is the 50,000 unlabelled training reviews (label -1), for word vectors.
    """
    path = Path(path)
    found = _folder_rows(path, splits) if path.is_dir() else _tarball_rows(path, splits)
    return {split: _as_split(rows) for split, rows in found.items()}


def _folder_rows(path: Path, splits: tuple[str, ...]) -> dict[str, list[Row]]:
    """The rows of each split from a folder in the aclImdb layout."""
    found: dict[str, list[Row]] = {s: [] for s in splits}
    for split in splits:
        found[split] += _folder_split(path, split)
    return found


def _folder_split(path: Path, split: str) -> list[Row]:
    """One split's rows: "unsup" is a label folder inside train/, not a split folder of its own."""
    folder, labels = ("train", ("unsup",)) if split == "unsup" else (split, ("neg", "pos"))
    return [
        (f.name, LABELS[label], f.read_text(encoding="utf-8"))
        for label in labels
        for f in sorted((path / folder / label).glob("*.txt"))
    ]


def _tarball_rows(path: Path, splits: tuple[str, ...]) -> dict[str, list[Row]]:
    """The rows of each split, read from the tarball in place in one pass over its members, in
    archive order (a gzip stream seeks backwards only by reading again from the start)."""
    found: dict[str, list[Row]] = {s: [] for s in splits}
    with tarfile.open(path, "r:*") as tar:
        for member in tqdm(tar, desc=f"read {path.name}", unit=" files", mininterval=2):
            m = _MEMBER.search(member.name)
            split = _member_split(m)
            if split in found and member.isfile():
                text = tar.extractfile(member).read().decode("utf-8")
                found[split].append((member.name, LABELS[m.group(2)], text))
    return found


def _member_split(m: re.Match | None) -> str | None:
    """The split of a tarball member: unsup reviews sit under train/ yet are a split of their own;
    None for members that are not reviews."""
    if m is None:
        return None
    return "unsup" if m.group(2) == "unsup" else m.group(1)


def _as_split(rows: list[Row]) -> Split:
    """Rows sorted by name (the file name in a folder, the member path in a tarball), so the order
    does not depend on the order the files were listed or archived in."""
    rows.sort()
    return Split([r[2] for r in rows], [r[1] for r in rows])


def validation_split(n: int, val_size: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """(validation indices, fitting indices) of ``n`` training reviews: the first ``val_size`` of a
    shuffle. Training draws it first from ``random.Random(seed)``, so calibrate.py redraws the same
    split from the same seed."""
    perm = list(range(n))
    rng.shuffle(perm)
    return perm[:val_size], perm[val_size:]


def load_tsv(path: Path) -> Split:
    """``label<TAB>text`` per line; label is pos/neg or 1/0."""
    texts, labels = [], []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        label, text = line.split("\t", 1)
        labels.append(1 if label.strip().lower() in ("1", "pos", "positive") else 0)
        texts.append(text)
    return Split(texts, labels)
