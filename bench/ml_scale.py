"""Risk models: external validation against the planted ceiling, and training cost on a large feature table.

    .venv/bin/python bench/ml_scale.py --sizes 6000 --replicate-to 1000000

For each size (persons, one export day) the region is generated, ingested, refined, linked and built, and
both shipped tasks are trained as `lakehouse train` does (leave-one-hospital-out, every learner):

  ceiling_auroc             AUROC of the generator's true probabilities against the outcomes, over the truth's
                            stays with a closed window (what no model can beat)
  best_auroc, baseline_auroc  pooled external-validation AUROC of the best learner and of logistic regression
  per_hospital              AUROC, AUPRC, Brier, calibration slope/intercept, ECE per held-out hospital
  train_s                   the whole training job (all folds, all learners, the final fit, logging, registry)

Then the readmission feature table is replicated (person keys salted, hospitals kept) to at least
--replicate-to rows and trained once more with a person split (the baseline, the GBT and the final fit:
three fits), reporting train_s and the peak memory of the driver: the JVM's peak RSS (VmHWM; in local mode
the executors live in it too) and the Python process's. Results: bench/results/<date>-ml.json.
"""

from __future__ import annotations

import datetime as dt
import json
import resource
import shutil
import time
from pathlib import Path

import mlflow
import pandas as pd
from _common import KEY, VAULT_KEY, session, write_results
from _common import parser as bench_parser
from pyspark.sql import functions as F
from sklearn.metrics import roc_auc_score

from lakehouse import io
from lakehouse.bronze.ingest import ingest
from lakehouse.catalog import features_table
from lakehouse.gold.build import build
from lakehouse.ml.train import train, train_inputs
from lakehouse.silver.link import link
from lakehouse.silver.refine import refine
from lakehouse.synth.generator import GeneratorConfig, generate, read_truth

METRICS = ("n", "positives", "auroc", "auprc", "brier", "calibration_slope", "calibration_intercept", "ece")


def ceilings(truth, end: pd.Timestamp) -> dict:
    """The true probabilities' AUROC per task, on the truth's stays (as tests/test_generator.py measures it)."""
    stays = read_truth(truth, "outcomes")
    for column in ("admit_time", "discharge_time"):
        stays[column] = pd.to_datetime(stays[column])
    admissions = stays.groupby("person_id")["admit_time"].apply(list).to_dict()
    alive = stays[(stays["died"] == "False") & (stays["discharge_time"] <= end - pd.Timedelta(days=30))]
    label = [any(d < a <= d + pd.Timedelta(days=30) for a in admissions[p])
             for p, d in zip(alive["person_id"], alive["discharge_time"], strict=True)]
    long_stays = stays[stays["mortality_probability"] != ""]
    died = long_stays["died"] == "True"
    return {"readmission_30d": {"ceiling_auroc": round(roc_auc_score(label, alive["readmission_probability"]
                                                                     .astype(float)), 4),
                                "truth_index_events": len(alive), "truth_positives": int(sum(label))},
            "inhospital_mortality": {"ceiling_auroc": round(roc_auc_score(died, long_stays["mortality_probability"]
                                                                          .astype(float)), 4),
                                     "truth_index_events": len(long_stays), "truth_positives": int(died.sum())}}


def trained(spark, settings, task) -> dict:
    started = time.perf_counter()
    result = train(spark, settings, task, train_inputs(spark, settings, task))
    seconds = round(time.perf_counter() - started, 1)
    metrics = mlflow.get_run(result.run_id).data.metrics
    hospitals = sorted({k.split("/")[1] for k in metrics if k.startswith("hospital/")})
    return {"train_s": seconds, "best_model": mlflow.get_run(result.run_id).data.tags["best_model"],
            "index_events": int(metrics["n_index_events"]), "positives": int(metrics["n_positives"]),
            "best_auroc": round(metrics["pooled/auroc"], 4),
            "baseline_auroc": round(metrics["baseline/pooled/auroc"], 4),
            "pooled": {m: round(metrics[f"pooled/{m}"], 4) for m in METRICS},
            "per_hospital": {h: {m: round(metrics[f"hospital/{h}/{m}"], 4) for m in METRICS} for h in hospitals},
            "excluded_persons": {h: int(metrics[f"fold/{h}/excluded_persons"]) for h in hospitals}}


def peak_rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))


def at_scale(spark, settings, rows: int) -> dict:
    """The readmission features replicated to >= rows, trained with a person split (three fits)."""
    task = settings.task("readmission_30d")
    ref = features_table(task.name, task.features)
    features = io.read(spark, ref, settings.root)
    copies = -(-rows // features.count())
    big = (features.crossJoin(spark.range(copies).withColumnRenamed("id", "copy"))
           .withColumn("person_key", F.concat_ws("#", "person_key", "copy"))
           .withColumn("encounter_key", F.concat_ws("#", "encounter_key", "copy")).drop("copy"))
    scaled = settings.model_copy(update={"root": str(Path(settings.root).parent / "replicated")})
    shutil.rmtree(scaled.root, ignore_errors=True)
    io.overwrite(spark, big, ref, scaled.root)
    split_task = task.model_copy(update={"validation": "person_split"})
    jvm_pid = spark._jvm.java.lang.ProcessHandle.current().pid()
    with open(f"/proc/{jvm_pid}/clear_refs", "w", encoding="ascii") as reset:
        reset.write("5")  # resets VmHWM to the current RSS
    started = time.perf_counter()
    train(spark, scaled, split_task, train_inputs(spark, scaled, split_task))
    return {"rows": io.describe(spark, ref, scaled.root).rows, "features": len(task.features),
            "validation": "person_split (3 fits)", "train_s": round(time.perf_counter() - started, 1),
            "driver_jvm_peak_rss_mb": round(peak_rss_kb(jvm_pid) / 1024),
            "python_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    parser = bench_parser(__doc__, "var/bench/ml", [6_000])
    parser.add_argument("--replicate-to", type=int, default=1_000_000)
    parser.add_argument("--scale-only-root", help="skip the regions: replicate the features under this built root")
    args = parser.parse_args()
    out, settings, spark = session(args)
    if args.scale_only_root:
        scaled = at_scale(spark, settings.model_copy(update={"root": str(Path(args.scale_only_root).resolve())}),
                          args.replicate_to)
        print(json.dumps(scaled), flush=True)
        print(write_results("ml", "replicated", [scaled], spark, file=f"{dt.date.today()}-ml-train-scale.json",
                            source_root=args.scale_only_root))
        return
    results = []
    for size in args.sizes:
        generated = generate(out / f"p{size}", patients=size, days=1, workers=args.workers, overwrite=True)
        local = settings.model_copy(update={"root": str(out / f"root-{size}")})
        shutil.rmtree(local.root, ignore_errors=True)
        row = {"persons": size}
        started = time.perf_counter()
        ingest(spark, local, str(generated.landing), "day-1")
        refine(spark, local, KEY, VAULT_KEY, "refine-1")
        link(spark, local, KEY, VAULT_KEY, "link-1")
        build(spark, local, None)
        row["pipeline_s"] = round(time.perf_counter() - started, 1)
        truth = ceilings(generated.truth, GeneratorConfig().end)
        for name in ("readmission_30d", "inhospital_mortality"):
            row[name] = {**truth[name], **trained(spark, local, local.task(name))}
            print(json.dumps({name: row[name]}), flush=True)
        if args.replicate_to:
            row["replicated"] = at_scale(spark, local, args.replicate_to)
            print(json.dumps(row["replicated"]), flush=True)
        results.append(row)
    print(write_results("ml", "sizes", results, spark))


if __name__ == "__main__":
    main()
