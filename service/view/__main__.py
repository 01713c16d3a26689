"""``python -m holostream.service.view``: the same as ``holostream view``."""

import sys

from holostream.service.cli import main

if __name__ == "__main__":
    sys.exit(main(["view", *sys.argv[1:]]))
