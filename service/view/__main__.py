"""``python -m holostream.service.view``: the same as ``holostream view``."""

import argparse
import logging
import sys

from holostream.service.view.server import add_arguments, run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="holostream view", description=__doc__)
    add_arguments(parser)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run(parser.parse_args()))
