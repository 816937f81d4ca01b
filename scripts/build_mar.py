"""Package the model, vocabulary, tokenizer setup and handler into a TorchServe .mar archive.

usage: python scripts/build_mar.py [--artifacts model_store/artifacts] [--export-path model_store]
                                   [--config model-config.yaml] [--version 1.0] [--name imdb_sentiment]

The program is ``imdb_ops.build_mar`` (``main(argv)`` parses the options, so tests run it in-process).
"""

from imdb_ops.build_mar import main

if __name__ == "__main__":
    main()
