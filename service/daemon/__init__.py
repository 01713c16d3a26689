"""The live daemon's processes and their wiring (``holostream serve``).

``main`` spawns and supervises the others; each process role has one module with one entry
function: ``ingest.run_ingest``, ``worker.run_worker``, ``reconstructor.run_reconstructor``.
"""
