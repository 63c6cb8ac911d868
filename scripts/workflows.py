"""Build or check the shipped workflows: ``python scripts/workflows.py build|check`` (see
``scripts/workflow_gen/cli.py``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.workflow_gen.cli import main

if __name__ == "__main__":
    sys.exit(main())
