"""Build both Docker images from a local Debian base, run each, and check it against the same server run locally.

usage: python scripts/image_test.py [--servers torchserve,kserve] [--tag imdb-sentiment:image-test]
                                    [--workdir build/image-test] [--rootfs build/rootfs-bookworm] [--timeout 900]

The program is ``imdb_ops.image_test`` (``main(argv)`` parses the options, so tests run it in-process).
"""

from imdb_ops.image_test import main

if __name__ == "__main__":
    main()
