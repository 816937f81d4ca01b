"""The wheels scripts/gpu_check.sh carries to a GPU machine, and how they are slimmed to fit.

usage: python scripts/gpu_wheels.py pins                    # one ``dist==version`` a line
       python scripts/gpu_wheels.py slim WHEEL PREFIX ...   # drop files under PREFIXes, recompress LZMA

The GPU machine has Python 3.12 and a CUDA torch but no captum, spaCy or TorchServe, and no network.
``pins`` names exactly the distributions (and this venv's versions) that the handler, the tokenizer,
``ts.context`` and the benchmark modules import, found by importing them rather than by a hand-kept
list, minus torch and what the GPU image already has (``ON_DEVICE``; $SKIP_WHEELS adds more).
The device call carries at most 64 MiB, so ``slim`` drops what does not run there (TorchServe's
44 MB Java frontend, test suites, sample data) with its RECORD lines, and recompresses every member
with LZMA, a zip method pip extracts.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import re
import sys
import zipfile
from pathlib import Path

OURS = {"handler", "imdb_bench", "imdb_training", "imdb_ops"}
# What the lent GPU image has already (the device tool's KINDS.md, read 2026-11-17), torch's own
# requirements included: carrying them would pass 64 MiB.
ON_DEVICE = {
    "torch", "triton", "sympy", "mpmath", "networkx", "filelock", "fsspec", "jinja2", "markupsafe", "setuptools",
    "numpy", "matplotlib", "pillow", "fonttools", "kiwisolver", "cycler", "pyparsing", "python-dateutil",
    "contourpy", "packaging", "pyyaml", "requests", "urllib3", "certifi", "charset-normalizer", "idna",
    "rich", "pygments", "markdown-it-py", "mdurl", "safetensors", "psutil", "click", "shellingham", "typer",
    "httpx", "httpcore", "h11", "anyio", "tqdm", "typing-extensions", "annotated-doc", "wrapt", "six",
}  # fmt: skip
DEVICE_MODULES = (
    "captum.attr",
    "ts.context",
    "yaml",
    "handler.sentiment_handler",
    "imdb_bench.engines",
    "imdb_bench.workers",
)


def imported_distributions(modules: tuple[str, ...] = DEVICE_MODULES) -> set[str]:
    """Distributions whose top-level packages importing ``modules`` (and tokenizing once: spaCy
    loads its language data lazily) brings into this interpreter."""
    before = set(sys.modules)
    for name in modules:
        importlib.import_module(name)
    from handler.text import tokenize

    tokenize(["warm <br /> up"])
    tops = {m.split(".")[0] for m in set(sys.modules) - before} - OURS  # ours travel as files
    by_top = md.packages_distributions()
    return {d for t in tops for d in by_top.get(t, [])}


def normalized(name: str) -> str:
    """A distribution name as PEP 503 compares them: typing_extensions is typing-extensions."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(dists: set[str], skip: set[str]) -> list[str]:
    """``dist==version`` of this venv for each distribution the device lacks."""
    skip = {normalized(s) for s in skip}
    keep = [d for d in dists if normalized(d) not in skip and not normalized(d).startswith("nvidia")]
    return [f"{d}=={md.version(d)}" for d in sorted(keep, key=str.lower)]


def slim(wheel: Path, prefixes: tuple[str, ...]) -> Path:
    """Rewrite ``wheel`` without members under ``prefixes`` (and their RECORD lines), LZMA-compressed."""
    tmp = wheel.with_name(wheel.name + ".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_LZMA) as dst:
        for item in src.infolist():
            if item.filename.startswith(prefixes):
                continue
            data = src.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                data = b"".join(line for line in data.splitlines(True) if not line.decode().startswith(prefixes))
            item.compress_type = zipfile.ZIP_LZMA
            dst.writestr(item, data)
    os.replace(tmp, wheel)
    return wheel


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["pins"]:
        skip = ON_DEVICE | set(os.environ.get("SKIP_WHEELS", "").split())
        print("\n".join(pins(imported_distributions(), skip)))
    elif args[:1] == ["slim"] and len(args) >= 3:
        slim(Path(args[1]), tuple(args[2:]))
    else:
        sys.exit(__doc__.split("\n\n")[1])


if __name__ == "__main__":
    main()
