"""What every scale benchmark shares: its command line, its Spark session and its results file."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
from pathlib import Path

from lakehouse.config import Settings, load_settings
from lakehouse.spark import build_spark

PROJECT = Path(__file__).resolve().parents[1]
KEY, VAULT_KEY = bytes(range(32)), bytes(range(32, 64))  # benchmark keys: the data is synthetic


def parser(doc: str, out: str, sizes: list[int]) -> argparse.ArgumentParser:
    """--out, --sizes (persons), --workers (generator processes), --driver-memory; add your own."""
    parsed = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parsed.add_argument("--out", default=out)
    parsed.add_argument("--sizes", type=int, nargs="+", default=sizes)
    parsed.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parsed.add_argument("--driver-memory", default="8g")
    return parsed


def session(args: argparse.Namespace):
    """(out folder, settings rooted under it, one local Spark session) for the whole benchmark."""
    out = Path(args.out).resolve()
    settings: Settings = load_settings(PROJECT / "conf", "local", str(out / "root"))
    spark = build_spark(settings, {"spark.driver.memory": args.driver_memory, "spark.ui.enabled": "false"})
    return out, settings, spark


def write_results(name: str, key: str, results: list[dict], spark, file: str | None = None, **extra) -> Path:
    """bench/results/<date>-<name>.json with the machine it was measured on."""
    folder = PROJECT / "bench" / "results"
    folder.mkdir(exist_ok=True)
    report = {"date": str(dt.date.today()), "cores": os.cpu_count(), "machine": platform.machine(),
              "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
              "spark_master": spark.sparkContext.master, key: results, **extra}
    target = folder / (file or f"{dt.date.today()}-{name}.json")
    target.write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n")
    return target
