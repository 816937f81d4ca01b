"""In-process handler workers: N processes, each running the real handler on one device.

usage: python scripts/bench_workers.py [--device cpu|cuda] [--workers 1 4 8 15] [--n 2048] [--lengths 256]
                                       [--artifacts DIR] [--data PATH] [--seed 0] [--out bench_results/workers-<device>.json]

The program is ``imdb_bench.workers`` (``main(argv)`` parses the options, so tests run it in-process).
"""

from imdb_bench.workers import main

if __name__ == "__main__":
    main()
