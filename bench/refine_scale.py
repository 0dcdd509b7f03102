"""Silver refine throughput at two sizes, and what a day-2 increment costs against a full rebuild.

    .venv/bin/python bench/refine_scale.py --sizes 7500 30000

For each size (persons; the default dialect mix of five hospitals, two days: day 1 is the full history,
day 2 an increment of new events, corrections, cancellations and duplicates) a region is generated and:

  first      ingest day 1, then `refine` (the first refine is a full pass over bronze)
  increment  ingest day 2, then `refine` (only day 2's batch is read)
  full       `refine --full` on the same lakehouse: every bronze row of both days read and re-mapped
  remap      a new vocabulary version mapping the region's most frequent unmapped lab code: the refine
             re-maps only the rows holding it (rows: silver rows carrying the new version)

Rows are bronze rows read (every entity). All in one Spark session (local[2]). Results go to stdout as
JSON lines and to bench/results/<date>-refine.json.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from _common import KEY, VAULT_KEY, session, write_results
from _common import parser as bench_parser
from pyspark.sql import functions as F

from lakehouse import io
from lakehouse.bronze.ingest import ingest
from lakehouse.catalog import BRONZE, SILVER
from lakehouse.config import load_settings
from lakehouse.silver.refine import refine
from lakehouse.synth.generator import generate


def bronze_rows(spark, settings, batch: str | None = None) -> int:
    total = 0
    for ref in BRONZE.values():
        if io.exists(spark, ref, settings.root):
            frame = io.read(spark, ref, settings.root)
            total += (frame if batch is None else frame.where(frame._batch_id == batch)).count()
    return total


def timed_refine(spark, settings, run_id: str, full: bool = False) -> float:
    started = time.perf_counter()
    refine(spark, settings, KEY, VAULT_KEY, run_id, full)
    return round(time.perf_counter() - started, 1)


def new_lab_mapping(spark, settings, conf: Path):
    """A copy of the configuration whose vocabulary (version `bench`) maps the most frequent unmapped lab code."""
    labs = io.read(spark, SILVER["lab_result"], settings.root)
    code = (labs.where(~labs.is_mapped).groupBy("hospital_id", "source_code").count().orderBy(F.desc("count"))
            .first())
    if code is None:
        raise SystemExit("the region has no unmapped lab code to map: the generator plants them")
    shutil.rmtree(conf, ignore_errors=True)
    shutil.copytree(settings.conf_dir, conf)
    (conf / "vocab" / "VERSION").write_text("bench\n")
    with (conf / "vocab" / "lab_codes.csv").open("a", encoding="utf-8") as codes:
        codes.write(f"{code.hospital_id},{code.source_code},2160-0,Creatinine\n")
    return load_settings(conf, settings.env, settings.root)


def main() -> None:
    args = bench_parser(__doc__, "var/bench/refine", [7_500, 30_000]).parse_args()
    out, settings, spark = session(args)
    results = []
    for size in args.sizes:
        region = out / f"p{size}"
        generated = generate(region, patients=size, days=2, workers=args.workers, overwrite=True)
        days = sorted({p.name for p in generated.landing.glob("*/*") if p.is_dir()})
        local = settings.model_copy(update={"root": str(out / f"root-{size}")})
        shutil.rmtree(local.root, ignore_errors=True)
        landing = out / f"landing-{size}"
        shutil.rmtree(landing, ignore_errors=True)
        row = {"persons": size}
        for n, day in enumerate(days):
            for folder in sorted(generated.landing.glob(f"*/{day}")):
                (landing / folder.parent.name).mkdir(parents=True, exist_ok=True)
                (landing / folder.parent.name / day).symlink_to(folder)
            batch = f"day-{n + 1}"
            ingest(spark, local, str(landing), batch)
            stage = "first" if n == 0 else "increment"
            row[f"{stage}_rows"] = bronze_rows(spark, local, batch)
            row[f"{stage}_s"] = timed_refine(spark, local, f"bench-{n}")
        row["full_rows"] = bronze_rows(spark, local)
        row["full_s"] = timed_refine(spark, local, "bench-full", full=True)
        remapped = new_lab_mapping(spark, local, out / f"conf-{size}")
        row["remap_s"] = timed_refine(spark, remapped, "bench-remap")
        row["remap_rows"] = io.read(spark, SILVER["lab_result"], local.root).where("vocab_version = 'bench'").count()
        for stage in ("first", "increment", "full", "remap"):
            row[f"{stage}_rows_per_s"] = round(row[f"{stage}_rows"] / row[f"{stage}_s"])
        row["increment_row_share"] = round(row["increment_rows"] / row["full_rows"], 4)
        row["increment_cost_share"] = round(row["increment_s"] / row["full_s"], 3)
        row["remap_cost_share"] = round(row["remap_s"] / row["full_s"], 3)
        print(json.dumps(row), flush=True)
        results.append(row)
        shutil.rmtree(region)
        shutil.rmtree(landing)
        shutil.rmtree(local.root)
        shutil.rmtree(remapped.conf_dir)
    write_results("refine", "refine", results, spark)


if __name__ == "__main__":
    main()
