"""Start, stop or check imdb_sentiment on KServe's Python model server (`make serve-kserve`).

usage: python scripts/serve_kserve.py start|stop|status [--model model_store/imdb_sentiment.mar]
                                      [--port 8085] [--timeout 120]

The program is ``imdb_ops.serve_kserve`` (``main(argv)`` parses the options, so tests run it in-process).
"""

from imdb_ops.serve_kserve import main

if __name__ == "__main__":
    main()
