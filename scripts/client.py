"""usage: python scripts/client.py [options] REVIEW|-|FILE|DIR ...

The imdb-explain client (``imdb_client.cli``) from a checkout; see --help.
"""

import sys

from imdb_client.cli import main

if __name__ == "__main__":
    sys.exit(main())
