"""The commands a user types: one module per ``holostream`` sub-command.

Each exposes ``add_arguments(parser)`` and ``run(args) -> int``; ``service/cli.py`` lists them.
"""
