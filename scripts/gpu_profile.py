"""Where the device time goes in the served configuration (exact): reviews per call, chunk budget,

usage: python scripts/gpu_profile.py [--device cuda] [--reviews .whl/reviews-256.tsv] [--artifacts DIR]
                                     [--plan 1024:29 2048:28 2048:29 4096:29 4096:30] [--calls 10]

The program is ``imdb_bench.gpu_profile`` (``main(argv)`` parses the options, so tests run it in-process).
"""

from imdb_bench.gpu_profile import main

if __name__ == "__main__":
    main()
