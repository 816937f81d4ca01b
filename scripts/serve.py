"""Start, stop and check a TorchServe instance serving imdb_sentiment.

usage: python scripts/serve.py {start,stop,status} [--workdir .] [--config config.properties]
                               [--model-store model_store] [--timeout 600]

The program is ``imdb_ops.serve`` (``main(argv)`` parses the options, so tests run it in-process).
"""

from imdb_ops.serve import main

if __name__ == "__main__":
    main()
