"""The note scrubber against the identifiers the generator planted, on a region already ingested.

    .venv/bin/python bench/scrub_quality.py --root var/bench/refine/root-2400 --truth var/bench/refine/p2400/truth

Prints recall per identifier kind and the precision of what the scrubber removed (JSON).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lakehouse.config import load_settings
from lakehouse.spark import build_spark
from lakehouse.synth.scrub_truth import scrub_quality

PROJECT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="a lakehouse root whose bronze.note is landed")
    parser.add_argument("--truth", required=True, help="the generator's truth folder of that region")
    args = parser.parse_args()
    settings = load_settings(PROJECT / "conf", "local", str(Path(args.root).resolve()))
    spark = build_spark(settings, {"spark.ui.enabled": "false"})
    print(json.dumps(scrub_quality(spark, settings, Path(args.truth)), ensure_ascii=False, indent=1))
    spark.stop()


if __name__ == "__main__":
    main()
