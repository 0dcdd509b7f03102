"""Shared by the spark-submit entry points in this folder: put the project on the path, run the CLI.

Each job file is one line of wiring so `spark-submit jobs/<stage>.py --conf-dir conf --env local`
runs exactly the code that `lakehouse <stage>` runs.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without an install too


def run(command: str) -> None:
    from lakehouse.cli import main

    sys.exit(main([command, *sys.argv[1:]]))
