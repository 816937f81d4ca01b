"""Accuracy, confusion counts and calibration of saved artifacts on the IMDB test set, a folder or a TSV.

usage: python scripts/evaluate.py [--artifacts model_store/artifacts] [--data PATH] [--limit N]

The program is ``imdb_training.evaluate`` (``main(argv)`` parses the options, so tests run it in-process).
"""

from imdb_training.evaluate import main

if __name__ == "__main__":
    main()
