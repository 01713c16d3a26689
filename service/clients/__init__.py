"""Clients of the daemon's three sockets, used by the commands, the demo and the tests.

``detector``: PUSH a scan into ingest, like a detector; ``subscriber``: decode what the PUB
socket sends; ``control``: one REQ/REP request.
"""
