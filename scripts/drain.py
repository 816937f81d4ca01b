"""What in-flight, queued and newly routed requests get when a serving pod is terminated under load.

usage: python scripts/drain.py {torchserve,kserve} [--clients 8] [--load 5] [--route 3]
                               [--prestop shipped|none|'CMD'] [--grace SECONDS]

The program is ``imdb_ops.drain`` (``main(argv)`` parses the options, so tests run it in-process).
"""

from imdb_ops.drain import main

if __name__ == "__main__":
    main()
