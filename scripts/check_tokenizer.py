"""Check the bounded tokenizer: spaCy's own tokens on real reviews, bounded time on pathological ones.

usage: python scripts/check_tokenizer.py [--data PATH] [--split test [train]] [--chars 100000] [--alone-chars 10000]

The program is ``imdb_training.check_tokenizer`` (``main(argv)`` parses the options, so tests run it in-process).
"""

from imdb_training.check_tokenizer import main

if __name__ == "__main__":
    main()
