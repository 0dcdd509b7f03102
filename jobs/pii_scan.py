"""spark-submit entry point of `lakehouse pii-scan`: spark-submit jobs/pii_scan.py --conf-dir conf --env local"""

from _entry import run

run("pii-scan")
