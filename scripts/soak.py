"""Slow reliability runs against a real TorchServe or KServe server on loopback (docs/reliability.md).

usage: python scripts/soak.py soak  [--server torchserve|kserve] [--requests 20000] [--concurrency 16]
                                    [--hostile 0.05] [--novel 0.2] [--fuzz 0.02] [--rss-interval 10]
       python scripts/soak.py chaos [--server torchserve|kserve] [--reviews 5000] [--kills 3]
                                    [--retries 5] [--concurrency 2] [--restart-delay 0]

`make soak` / `make chaos` run these (SERVER=kserve for the KServe server). The program is
``imdb_ops.soak`` (``main(argv)`` parses the options, so tests run it in-process).
"""

from imdb_ops.soak import main

if __name__ == "__main__":
    main()
