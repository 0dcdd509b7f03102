"""spark-submit entry point of `lakehouse refine`: spark-submit jobs/refine.py --conf-dir conf --env local"""

from _entry import run

run("refine")
