"""Make the README's pictures from the shipped model: the HTML report and the terminal output.

usage: python scripts/screenshots.py [--artifacts model_store/artifacts] [--out docs/img] [--data PATH]

The program is ``imdb_bench.screenshots`` (``main(argv)`` parses the options, so tests run it in-process).
"""

from imdb_bench.screenshots import main

if __name__ == "__main__":
    main()
