"""Slow reliability runs against a real TorchServe on loopback (docs/reliability.md).

usage: python scripts/soak.py soak  [--requests 5000] [--concurrency 16] [--hostile 0.05]
       python scripts/soak.py chaos [--kills 3] [--clients 16]

The program is ``imdb_ops.soak`` (``main(argv)`` parses the options, so tests run it in-process).
"""

from imdb_ops.soak import main

if __name__ == "__main__":
    main()
