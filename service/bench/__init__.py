"""Benchmarks behind ``holostream bench``; not part of the daemon.

``chain``: each stage and the whole reconstruction chain, with peers; ``phase``: our phase
retrieval against HoToPy's; ``ingest``: ingest throughput against a bare pyzmq loop.
"""
