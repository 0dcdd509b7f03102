"""spark-submit entry point of `lakehouse ingest`: spark-submit jobs/ingest.py --conf-dir conf --env local"""

from _entry import run

run("ingest")
