"""A guard in front of TorchServe's HTTP management API: the caps TorchServe 0.12 does not enforce.

usage: python scripts/management_guard.py --upstream http://127.0.0.1:8081 [--listen 127.0.0.1:8091]
                                          [--max-workers 8]

The program is ``imdb_ops.management_guard`` (``main(argv)`` parses the options, so tests run it in-process).
"""

from imdb_ops.management_guard import main

if __name__ == "__main__":
    main()
