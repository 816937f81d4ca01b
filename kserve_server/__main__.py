"""imdb_sentiment on KServe's Python model server.

usage: python -m kserve_server [--model PATH] [--config model-config.yaml] [--host 127.0.0.1]
                               [--port 8085] [--version 1.0] [--grace 30]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m kserve_server", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=REPO / "model_store" / "imdb_sentiment.mar", help=".mar or folder")
    p.add_argument("--config", type=Path, help="model-config.yaml (default: the archive's, else the repo's)")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 in a container")
    p.add_argument("--port", type=int, default=8085)
    p.add_argument("--version", help="model version (default: the archive's manifest)")
    p.add_argument("--grace", type=int, default=30, help="seconds to finish in-flight requests on SIGTERM")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse(sys.argv[1:])
    sys.argv = sys.argv[:1]  # kserve parses sys.argv when imported: ours are not its options
    from kserve_server.server import build, serve

    with tempfile.TemporaryDirectory(prefix="imdb-kserve-") as workdir:
        serve(build(args.model, args.config, args.version, Path(workdir)), args.host, args.port, args.grace)
