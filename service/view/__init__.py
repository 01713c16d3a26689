"""``holostream view`` (command line in :mod:`holostream.service.commands.view`): a web page that shows what the daemon publishes, live.

A separate process that subscribes to the daemon's PUB socket (it never asks the daemon for
anything, so it cannot slow the reconstruction) and serves one page to any number of browsers:

- :mod:`.state`: the latest status and volume, the per-scan display scale, slices (no I/O);
- :mod:`.wire`: the binary message that carries slices to the page;
- :mod:`.server`: the aiohttp application and the SUB socket task;
- ``static/``: the page (plain HTML, CSS and JavaScript drawing on canvases).
"""
