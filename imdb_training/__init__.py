"""The offline model side: the IMDB data, training, calibration, evaluation and the tokenizer checks.

It writes what the served core loads (``model_store/artifacts``: weights, vocabulary, settings) and
imports only the core (``handler``), never a server adapter or the operations and benchmark tools.
"""
