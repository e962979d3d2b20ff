"""Run the benchmark harness: the same as ``lmforge bench`` (see docs/benchmarks.md)."""

import sys

from lmforge.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
