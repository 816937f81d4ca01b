"""Train the IMDB sentiment CNN and write the default model's artifacts.

usage: python scripts/train.py [--data PATH] [--out model_store/artifacts] [--epochs 10] [--seed 0]

The program is ``imdb_training.train`` (``main(argv)`` parses the options, so tests run it in-process).
"""

from imdb_training.train import main

if __name__ == "__main__":
    main()
