"""Operating the servers: the archive (.mar), starting and stopping TorchServe and the KServe server,
the management guard, and the slow reliability runs (soak, chaos, drain, the image check).

It sits above the offline model side (``imdb_training``) and both adapters, and below the benchmarks.
"""
