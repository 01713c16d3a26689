"""holostream: live reconstruction service for near-field holo-tomography.

Subpackages: ``holostream.workers`` (pure array computation), ``holostream.shared``
(what crosses process boundaries) and ``holostream.service`` (daemon, sockets, CLI).
"""

__version__ = "0.1.0"
