"""spark-submit entry point of `lakehouse generate`: spark-submit jobs/generate.py --conf-dir conf --env local"""

from _entry import run

run("generate")
