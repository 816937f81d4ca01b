"""How often the max-pool tie rule changes an explanation, on the IMDB test reviews.

usage: python scripts/ties_census.py [--artifacts model_store/artifacts] [--data PATH] [--limit N]
                                     [--method exact] [--out FILE.json]

The program is ``imdb_training.ties_census`` (``main(argv)`` parses the options, so tests run it in-process).
"""

from imdb_training.ties_census import main

if __name__ == "__main__":
    main()
