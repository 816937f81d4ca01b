"""Engine comparison, in-process: the tutorial's way vs batched Captum vs this project's engine.

usage: python scripts/bench_engines.py [--quick] [--device cpu|cuda] [--lengths imdb|256] [--n N]
                                       [--batch-sizes B ...] [--steps 50] [--artifacts DIR] [--data PATH]
                                       [--seed 0] [--out bench_results/engines-<device>.json]

The program is ``imdb_bench.engines`` (``main(argv)`` parses the options, so tests run it in-process).
"""

from imdb_bench.engines import main

if __name__ == "__main__":
    main()
