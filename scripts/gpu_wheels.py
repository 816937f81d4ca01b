"""The wheels scripts/gpu_check.sh carries to a GPU machine, and how they are slimmed to fit.

usage: python scripts/gpu_wheels.py pins                    # one ``dist==version`` a line
       python scripts/gpu_wheels.py slim WHEEL PREFIX ...   # drop files under PREFIXes, recompress LZMA

The program is ``imdb_bench.gpu_wheels`` (``main(argv)`` parses the options, so tests run it in-process).
"""

from imdb_bench.gpu_wheels import main

if __name__ == "__main__":
    main()
