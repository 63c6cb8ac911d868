"""Build the toy world's assets: ``python scripts/build_toyworld.py [--out DIR] [--check]`` (see
``toyworld/build/cli.py``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toyworld.build.cli import main

if __name__ == "__main__":
    sys.exit(main())
