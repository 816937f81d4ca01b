"""Package the model, vocabulary, tokenizer setup and handler into a TorchServe .mar archive.

usage: python scripts/build_mar.py [--artifacts model_store/artifacts] [--export-path model_store]
                                   [--config model-config.yaml] [--version 1.0] [--name imdb_sentiment]

torch-model-archiver flattens --extra-files folders into the archive root, so the handler package
is staged inside a parent folder: the archive then holds ``handler/`` as a package (imported by the
entry module ``sentiment_handler.py``) beside the artifacts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
ARTIFACT_FILES = ("weights.safetensors", "model_config.json", "vocab.json", "metrics.json")


def build(
    artifacts: Path,
    export_path: Path,
    config: Path = REPO / "model-config.yaml",
    version: str = "1.0",
    name: str = "imdb_sentiment",
    **overrides,
) -> Path:
    """Archive ``artifacts``; ``overrides`` replace top-level model-config keys (e.g. batchSize=1)."""
    artifacts, export_path = Path(artifacts), Path(export_path)
    missing = [f for f in ARTIFACT_FILES[:3] if not (artifacts / f).exists()]
    if missing:
        raise FileNotFoundError(f"{artifacts} lacks {', '.join(missing)}: run `make train` or use the committed model")
    export_path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as stage:
        if overrides:
            settings = {**yaml.safe_load(Path(config).read_text()), **overrides}
            config = Path(stage) / "model-config.yaml"
            config.write_text(yaml.safe_dump(settings, sort_keys=False))
        pkg = Path(stage) / "pkg"
        shutil.copytree(REPO / "handler", pkg / "handler", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        extra = [str(pkg)] + [str(artifacts / f) for f in ARTIFACT_FILES[1:] if (artifacts / f).exists()]
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
            str(export_path),
            "--force",
        ]
        # The archiver stages in $TMPDIR/<model name>: a private TMPDIR lets builds run side by side.
        subprocess.run(cmd, check=True, env={**os.environ, "TMPDIR": stage})
    return export_path / f"{name}.mar"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", default=str(REPO / "model_store" / "artifacts"))
    p.add_argument("--export-path", default=str(REPO / "model_store"))
    p.add_argument("--config", default=str(REPO / "model-config.yaml"))
    p.add_argument("--version", default="1.0")
    p.add_argument("--name", default="imdb_sentiment")
    a = p.parse_args(argv)
    print(build(Path(a.artifacts), Path(a.export_path), Path(a.config), a.version, a.name))


if __name__ == "__main__":
    main()
