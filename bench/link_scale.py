"""Regional person index: linkage quality against the generator's truth and throughput at two sizes.

    .venv/bin/python bench/link_scale.py --sizes 20000 100000

For each size (persons, the generator's defaults otherwise: five hospitals, 30% of persons at a second
hospital, identity noise 5% per kind on second-hospital records, 1% hard negatives) a one-day region is
generated; only its patient files are ingested and refined (silver.person and vault.identity), then
`link` runs over the vault and is measured:

  link_s, records_per_s   the whole link job (decrypt, normalise, block, score, cluster, write, update keys)
  quality                 pairwise precision/recall, hard negatives kept apart, recall per noise kind
  relink_s                a second run on unchanged data (stable ids: every person keeps its id)

All in one Spark session (local[2]). Results go to stdout and bench/results/<date>-link.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import time
from pathlib import Path

from lakehouse import io
from lakehouse.bronze.ingest import ingest
from lakehouse.catalog import PERSON_EVENT
from lakehouse.config import load_settings
from lakehouse.silver.link import link
from lakehouse.silver.refine import refine
from lakehouse.spark import build_spark
from lakehouse.synth.generator import generate
from lakehouse.synth.linkage_truth import evaluate

PROJECT = Path(__file__).resolve().parents[1]
KEY, VAULT_KEY = bytes(range(32)), bytes(range(32, 64))  # benchmark keys: the data is synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="var/bench/link")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--driver-memory", default="8g")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    settings = load_settings(PROJECT / "conf", "local", str(out / "root"))
    spark = build_spark(settings, {"spark.driver.memory": args.driver_memory, "spark.ui.enabled": "false"})
    results = []
    for size in args.sizes:
        generated = generate(out / f"p{size}", patients=size, days=1, workers=args.workers, overwrite=True)
        landing = out / f"landing-{size}"
        shutil.rmtree(landing, ignore_errors=True)
        for file in generated.landing.glob("*/*/patient-*"):
            target = landing / file.relative_to(generated.landing)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(file)
        local = settings.model_copy(update={"root": str(out / f"root-{size}")})
        shutil.rmtree(local.root, ignore_errors=True)
        ingest(spark, local, str(landing), "day-1")
        refine(spark, local, KEY, VAULT_KEY, "refine-1")
        started = time.perf_counter()
        result = link(spark, local, KEY, VAULT_KEY, "link-1")
        link_s = time.perf_counter() - started
        quality = evaluate(spark, local.root, generated.truth, KEY)
        started = time.perf_counter()
        again = link(spark, local, KEY, VAULT_KEY, "link-2")
        relink_s = time.perf_counter() - started
        events_second_run = io.read(spark, PERSON_EVENT, local.root).where("run_id = 'link-2'").count()
        row = {"persons": size, "records": result.records, "persons_linked": result.persons,
               "candidate_pairs": result.pairs, "links": result.links, "oversized_blocks": result.oversized_blocks,
               "link_s": round(link_s, 1), "records_per_s": round(result.records / link_s),
               "relink_s": round(relink_s, 1), "second_run_changes": events_second_run + again.changed_keys,
               "quality": quality}
        print(json.dumps(row, ensure_ascii=False), flush=True)
        results.append(row)
    spark.stop()
    if len(results) >= 2:
        small, large = results[0], results[-1]
        growth = (large["link_s"] / small["link_s"]) / (large["records"] / small["records"])
        note = f"link time grew {growth:.2f}x as fast as records from {small['persons']} to {large['persons']} persons"
    else:
        note = "one size only"
    report = {"date": dt.date.today().isoformat(), "cores": os.cpu_count(), "machine": platform.machine(),
              "results": results, "notes": note}
    target = PROJECT / "bench" / "results" / f"{report['date']}-link.json"
    target.write_text(json.dumps(report, ensure_ascii=False, indent=1))
    print(note, f"-> {target}")


if __name__ == "__main__":
    main()
