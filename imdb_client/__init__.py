"""Command-line client for the imdb_sentiment TorchServe model (console script ``imdb-explain``).

It lives in its own package rather than in ``handler/`` (the server plugin packed into the .mar) so
that the console script can import it from any install; scripts/client.py runs the same code.
"""
