"""The real handler in-process on a device and on the CPU: the same answers within 1e-5 relative.

usage: python scripts/gpu_check_handler.py [--device cuda] [--reviews .whl/reviews-256.tsv] [--artifacts DIR]

The program is ``imdb_bench.gpu_check_handler`` (``main(argv)`` parses the options, so tests run it in-process).
"""

from imdb_bench.gpu_check_handler import main

if __name__ == "__main__":
    main()
