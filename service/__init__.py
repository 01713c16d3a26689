"""Processes and I/O: the daemon, its ZeroMQ sockets, configuration and the CLI."""
