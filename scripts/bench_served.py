"""Served load: a real TorchServe driven by concurrent clients, against the same handler in-process.

usage: python scripts/bench_served.py [--servers torchserve kserve] [--batch-sizes 8] [--concurrency 1 8 32]
                                      [--requests 256] [--per-request 1]
                                      [--kinds explanations predictions] [--repeat 3] [--worker-threads T]
                                      [--max-batch-delay MS] [--workers N]
                                      [--artifacts DIR] [--data PATH] [--seed 0] [--out bench_results/served-cpu.json]

The program is ``imdb_bench.served`` (``main(argv)`` parses the options, so tests run it in-process).
"""

from imdb_bench.served import main

if __name__ == "__main__":
    main()
