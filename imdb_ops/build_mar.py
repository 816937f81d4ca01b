"""Package the model, vocabulary, tokenizer setup and handler into a TorchServe .mar archive.

usage: python scripts/build_mar.py [--artifacts model_store/artifacts] [--export-path model_store]
                                   [--config model-config.yaml] [--version 1.0] [--name imdb_sentiment]

Each version gets its own archive: version 1.0 (the default) is ``imdb_sentiment.mar``, the one
config.properties loads; any other is ``imdb_sentiment-<version>.mar``, so building 2.0 never
overwrites 1.0. The manifest's modelName stays ``imdb_sentiment`` in both, and its modelVersion is
the version (TorchServe's model_version, and the answers').

``checksums.json`` in the archive records the SHA-256 of the weights, the vocabulary and the model
configuration as archived; the handler verifies them in ``initialize`` (a truncated or altered file
fails with one line instead of loading garbage).

torch-model-archiver flattens --extra-files folders into the archive root, so the handler package
is staged inside a parent folder: the archive then holds ``handler/`` as a package (imported by the
entry module ``sentiment_handler.py``) beside the artifacts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from handler.checksums import sha256

REPO = Path(__file__).resolve().parent.parent
ARTIFACT_FILES = ("weights.safetensors", "model_config.json", "vocab.json", "metrics.json")
DEFAULT_VERSION = "1.0"


def archive_path(export_path: Path, name: str = "imdb_sentiment", version: str = DEFAULT_VERSION) -> Path:
    """One archive per version: ``<name>.mar`` for the default version, ``<name>-<version>.mar`` else."""
    return Path(export_path) / (f"{name}.mar" if version == DEFAULT_VERSION else f"{name}-{version}.mar")


def write_checksums(artifacts: Path, dest: Path) -> Path:
    """checksums.json: {file name: sha256 hex} of the files the handler loads; it verifies them."""
    files = ("weights.safetensors", "vocab.json", "model_config.json")
    dest.write_text(json.dumps({f: sha256(artifacts / f) for f in files}, indent=1) + "\n")
    return dest


def check_batching(settings: dict) -> None:
    """Refuse a batching delay TorchServe would not honour: 0.12 reads ``maxBatchDelay`` 0 (or less)
    as unset and waits its own default, 100 ms, for every batch of more than one (measured: a lone
    request's p50 went from 6 ms at 2 to 110 ms at 0)."""
    if settings.get("batchSize", 1) > 1 and settings.get("maxBatchDelay", 100) < 1:
        raise ValueError(
            f"maxBatchDelay {settings['maxBatchDelay']} with batchSize {settings['batchSize']}: TorchServe reads it "
            "as unset and waits 100 ms per batch; give 1 ms or more"
        )


def build(
    artifacts: Path,
    export_path: Path,
    config: Path = REPO / "model-config.yaml",
    version: str = DEFAULT_VERSION,
    name: str = "imdb_sentiment",
    **overrides,
) -> Path:
    """Archive ``artifacts``; ``overrides`` replace top-level model-config keys (e.g. batchSize=1)."""
    artifacts, export_path = Path(artifacts), Path(export_path)
    missing = [f for f in ARTIFACT_FILES[:3] if not (artifacts / f).exists()]
    if missing:
        raise FileNotFoundError(f"{artifacts} lacks {', '.join(missing)}: run `make train` or use the committed model")
    export_path.mkdir(parents=True, exist_ok=True)
    target = archive_path(export_path, name, version)
    settings = {**yaml.safe_load(Path(config).read_text()), **overrides}
    check_batching(settings)
    with tempfile.TemporaryDirectory() as stage:
        if overrides:
            config = Path(stage) / "model-config.yaml"
            config.write_text(yaml.safe_dump(settings, sort_keys=False))
        pkg = Path(stage) / "pkg"
        shutil.copytree(REPO / "handler", pkg / "handler", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        extra = [str(pkg)] + [str(artifacts / f) for f in ARTIFACT_FILES[1:] if (artifacts / f).exists()]
        extra.append(str(write_checksums(artifacts, Path(stage) / "checksums.json")))
        archiver = Path(sys.executable).with_name("torch-model-archiver")
        cmd = [
            str(archiver) if archiver.exists() else "torch-model-archiver",
            "--model-name",
            name,
            "--version",
            version,
            "--handler",
            str(pkg / "handler" / "sentiment_handler.py"),
            "--serialized-file",
            str(artifacts / "weights.safetensors"),
            "--extra-files",
            ",".join(extra),
            "--config-file",
            str(config),
            "--export-path",
            stage,
            "--force",
        ]
        # The archiver stages in $TMPDIR/<model name>: a private TMPDIR lets builds run side by side.
        subprocess.run(cmd, check=True, env={**os.environ, "TMPDIR": stage})
        # Archived under the model's name, stored under the version's file name: moved next to the
        # target first, then renamed, so a server reading the store never sees half an archive.
        partial = target.with_name(target.name + ".partial")
        shutil.move(Path(stage) / f"{name}.mar", partial)
        os.replace(partial, target)
    return target


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", default=str(REPO / "model_store" / "artifacts"))
    p.add_argument("--export-path", default=str(REPO / "model_store"))
    p.add_argument("--config", default=str(REPO / "model-config.yaml"))
    p.add_argument("--version", default=DEFAULT_VERSION, help="modelVersion; a distinct archive per version")
    p.add_argument("--name", default="imdb_sentiment")
    a = p.parse_args(argv)
    print(build(Path(a.artifacts), Path(a.export_path), Path(a.config), a.version, a.name))


if __name__ == "__main__":
    main()
