"""spark-submit entry point of `lakehouse score`: spark-submit jobs/score.py --conf-dir conf --env local"""

from _entry import run

run("score")
