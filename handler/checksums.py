"""The archive's ``checksums.json`` ({file name: SHA-256 hex}), verified before the weights are used.

``scripts/build_mar.py`` writes it at archive time. A mismatch stops the worker with one line that
names the file, instead of serving (or retrying forever on) corrupt weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

CHECKSUMS_FILE = "checksums.json"


class ArchiveCorrupt(RuntimeError):
    pass


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(model_dir: Path) -> list[str]:
    """Check every file listed in ``checksums.json``; returns the names checked (none without the file)."""
    listing = Path(model_dir, CHECKSUMS_FILE)
    if not listing.exists():
        return []
    expected = json.loads(listing.read_text())
    for name, digest in expected.items():
        path = Path(model_dir, name)
        if not path.is_file():
            raise ArchiveCorrupt(f"{name}: listed in {CHECKSUMS_FILE} but missing, archive is corrupt")
        if sha256(path) != digest:
            raise ArchiveCorrupt(f"{name}: sha256 mismatch, archive is corrupt")
    return sorted(expected)
