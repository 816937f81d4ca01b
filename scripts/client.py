"""usage: python scripts/client.py [options] REVIEW|-|FILE|DIR ...

Runs the imdb-explain client (imdb_client/cli.py) from a checkout, installed or not; see --help.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imdb_client.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
