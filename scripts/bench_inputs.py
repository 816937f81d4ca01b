"""The benchmarks' inputs: IMDB test reviews picked by a seeded shuffle, and their length mix.

usage: python scripts/bench_inputs.py OUT.tsv [--n 4096] [--lengths 256] [--data PATH] [--seed 0]
       (writes the picked reviews as ``label<TAB>text``; scripts/gpu_check.sh carries that file to a
       GPU machine instead of the 80 MB tarball)

The program is ``imdb_bench.inputs`` (``main(argv)`` parses the options, so tests run it in-process).
"""

from imdb_bench.inputs import main

if __name__ == "__main__":
    main()
