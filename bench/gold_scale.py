"""Gold: full build, a day-2 increment, one person's timeline lookup and the diabetes cohort, at two sizes.

    .venv/bin/python bench/gold_scale.py --sizes 4000 12000 --rows-per-file 50000

For each size (persons; the generator's defaults otherwise, two export days) day 1 is ingested, refined
and linked, and gold is built in full; then day 2 is ingested, refined and linked, and gold is built
again, as an increment; then in full once more on the same silver (the baseline of the increment):

  full_s, increment_s, increment_share   gold build times and increment / full (same data, same session)
  lookup_p50_ms, lookup_p95_ms           one person's timeline (20 random persons, a fresh DataFrame each, no
                                         cache), after the full rebuild; files_scanned / files (data skipping)
  after_increment                        the same lookups just after the increment (its MERGE files are not
                                         range-laid-out until the next full build)
  diabetes_cohort_s                      `lakehouse cohort --name diabetes_inpatients` on the built timeline

`--rows-per-file` scales gold.timeline_rows_per_file (default 1,000,000) down so that a small region has
enough files for the skipping share to mean what it means on a region. Results: bench/results/<date>-gold.json.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import time

from _common import KEY, VAULT_KEY, session, write_results
from _common import parser as bench_parser

from lakehouse import io
from lakehouse.bronze.ingest import ingest
from lakehouse.catalog import TIMELINE
from lakehouse.gold.build import build, build_full, build_inputs, run_cohort, silver_tables
from lakehouse.gold.timeline import person_timeline
from lakehouse.silver.link import link
from lakehouse.silver.refine import refine
from lakehouse.synth.generator import generate


def lookups(spark, root: str, people: list[str]) -> dict:
    times, scanned = [], []
    files = spark.sql(f"DESCRIBE DETAIL delta.`{TIMELINE.path(root)}`").first().numFiles
    for person in people:
        started = time.perf_counter()
        read = person_timeline(spark, root, person)
        read.collect()
        times.append((time.perf_counter() - started) * 1000)
        scanned.append(io.files_scanned(read))
    times.sort()
    return {"lookup_p50_ms": round(statistics.median(times), 1),
            "lookup_p95_ms": round(times[int(0.95 * (len(times) - 1))], 1),
            "files": files, "files_scanned_max": max(scanned),
            "files_scanned_share_max": round(max(scanned) / files, 4)}


class Stopwatch:
    """`with Stopwatch() as watch: ...` then watch.seconds."""

    def __enter__(self):
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = round(time.perf_counter() - self.started, 1)


def main() -> None:
    parser = bench_parser(__doc__, "var/bench/gold", [4_000, 12_000])
    parser.add_argument("--rows-per-file", type=int, default=50_000)
    args = parser.parse_args()
    out, settings, spark = session(args)
    results = []
    for size in args.sizes:
        generated = generate(out / f"p{size}", patients=size, days=2, workers=args.workers, overwrite=True)
        gold = settings.main.gold.model_copy(update={"timeline_rows_per_file": args.rows_per_file})
        local = settings.model_copy(update={"root": str(out / f"root-{size}"),
                                            "main": settings.main.model_copy(update={"gold": gold})})
        shutil.rmtree(local.root, ignore_errors=True)
        landing = out / f"landing-{size}"
        shutil.rmtree(landing, ignore_errors=True)
        days = sorted({p.name for p in generated.landing.glob("*/*") if p.is_dir()})
        row = {"persons": size}
        previous = None
        for n, day in enumerate(days, start=1):
            for folder in sorted(generated.landing.glob(f"*/{day}")):
                (landing / folder.parent.name).mkdir(parents=True, exist_ok=True)
                (landing / folder.parent.name / day).symlink_to(folder)
            with Stopwatch() as watch:
                ingest(spark, local, str(landing), f"day-{n}")
                refine(spark, local, KEY, VAULT_KEY, f"refine-{n}")
                link(spark, local, KEY, VAULT_KEY, f"link-{n}")
            row[f"day{n}_silver_s"] = watch.seconds
            with Stopwatch() as watch:
                result = build(spark, local, previous)
            row[f"day{n}_gold_s"], row[f"day{n}_gold_mode"] = watch.seconds, result.summary()
            previous = {w.table: w.version for w in build_inputs(spark, local)}
        row["increment_s"] = row[f"day{len(days)}_gold_s"]
        timeline = io.read(spark, TIMELINE, local.root)
        row["timeline_rows"] = timeline.count()
        people = [r.person_key for r in timeline.select("person_key").distinct().collect()]  # benchmark only
        chosen = random.Random(size).sample(people, 20)
        row["after_increment"] = lookups(spark, local.root, chosen)
        with Stopwatch() as watch:
            build_full(spark, local, "baseline")
        row["full_s"] = watch.seconds
        row["increment_share"] = round(row["increment_s"] / row["full_s"], 3)
        row.update(lookups(spark, local.root, chosen))
        timeline = io.read(spark, TIMELINE, local.root)
        with Stopwatch() as watch:
            run_cohort(spark, local, local.cohort("diabetes_inpatients"), timeline, silver_tables(spark, local))
        row["diabetes_cohort_s"] = watch.seconds
        print(json.dumps(row), flush=True)
        results.append(row)
    print(write_results("gold", "sizes", results, spark, rows_per_file=args.rows_per_file))


if __name__ == "__main__":
    main()
