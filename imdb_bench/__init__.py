"""Measurements: the engine, served, worker and CPU benchmarks, the GPU check, and the README pictures.

The top layer of the offline side: it may import everything below it (operations, training, the
served core and its adapters); nothing imports it.
"""
