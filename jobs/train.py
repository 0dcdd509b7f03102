"""spark-submit entry point of `lakehouse train`: spark-submit jobs/train.py --conf-dir conf --env local"""

from _entry import run

run("train")
