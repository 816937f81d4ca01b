"""The worker's CPU per explained review, before and after, side by side in one run (issue 18).

usage: python scripts/bench_cpu.py [--old-commit 5ad290c | --old-tree DIR] [--n 512] [--rounds 5]
                                   [--stage-passes 3] [--artifacts DIR] [--data PATH] [--seed 0] [--out FILE]

The program is ``imdb_bench.cpu`` (``main(argv)`` parses the options, so tests run it in-process).
"""

from imdb_bench.cpu import main

if __name__ == "__main__":
    main()
