"""spark-submit entry point of `lakehouse link`: spark-submit jobs/link.py --conf-dir conf --env local"""

from _entry import run

run("link")
