"""spark-submit entry point of `lakehouse build`: spark-submit jobs/build.py --conf-dir conf --env local"""

from _entry import run

run("build")
