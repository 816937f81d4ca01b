"""Fit the temperature of saved artifacts on training's validation split and record it with them.

usage: python scripts/calibrate.py [--artifacts model_store/artifacts] [--data PATH] [--val-size 2500] [--seed 0]

The program is ``imdb_training.calibrate`` (``main(argv)`` parses the options, so tests run it in-process).
"""

from imdb_training.calibrate import main

if __name__ == "__main__":
    main()
