"""Beyond one machine: series of scans (and, later, live reconstructors) on a Dask cluster.

``engine``: the client, local or remote, with mutual TLS; ``series``: many scans in parallel,
restartable. An optional extra: ``pip install holostream[cluster]``.
"""
