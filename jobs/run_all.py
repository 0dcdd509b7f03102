"""spark-submit entry point of `lakehouse run-all`: spark-submit jobs/run_all.py --conf-dir conf --env local"""

from _entry import run

run("run-all")
