"""How well silver.person_link finds the generator's persons (tests and benchmarks; never the pipeline).

Pairwise precision and recall over record pairs, the share of hard negatives (twins, namesakes) kept
apart, and recall per identity-noise kind: a second-hospital record carrying that kind counts as found
when it is in the same person as the person's home-hospital record.
"""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import io
from lakehouse.catalog import PERSON_LINK
from lakehouse.silver.refine import patient_key
from lakehouse.synth.people import NOISE_KINDS


def _csv(spark: SparkSession, folder: Path) -> DataFrame:
    return spark.read.option("header", True).csv(str(folder / "*.csv"))


def evaluate(spark: SparkSession, root: str, truth: Path, key: bytes) -> dict:
    links = io.read(spark, PERSON_LINK, root).select("patient_key", F.col("person_id").alias("predicted"))
    records = (_csv(spark, truth / "patient_records")
               .select(patient_key(key, F.col("hospital_id"), F.col("mrn")).alias("patient_key"),
                       F.col("person_id").alias("true_person"), (F.col("primary") == "True").alias("primary"),
                       "noise")
               .join(links, "patient_key", "left").cache())
    try:
        return _metrics(spark, records, truth)
    finally:
        records.unpersist()


def _metrics(spark: SparkSession, records: DataFrame, truth: Path) -> dict:
    found = records.where(F.col("predicted").isNotNull())
    a, b = found.alias("a"), found.alias("b")

    def pairs_on(column: str) -> DataFrame:  # an equi-join: pairs sharing the column's value
        return a.join(b, (F.col(f"a.{column}") == F.col(f"b.{column}"))
                      & (F.col("a.patient_key") < F.col("b.patient_key")))

    same = pairs_on("true_person").agg(  # one pass: true pairs, and those the index linked
        F.count(F.lit(1)).alias("n"), F.count(F.when(F.col("a.predicted") == F.col("b.predicted"), 1)).alias("tp")
    ).first()
    true, tp = same.n, same.tp
    predicted = pairs_on("predicted").count()

    home = found.where("primary").select("true_person", F.col("predicted").alias("home_person"))
    noisy = (found.where(~F.col("primary")).join(home, "true_person")  # whose home record is there to meet
             .withColumn("kind", F.explode_outer(F.split(F.nullif(F.col("noise"), F.lit("")), ",")))
             .groupBy("kind").agg(F.count(F.lit(1)).alias("records"),
                                  F.sum((F.col("predicted") == F.col("home_person")).cast("int")).alias("found"))
             .collect())  # one row per noise kind
    per_kind = {r.kind or "none": {"records": r.records, "recall": (r.found or 0) / r.records} for r in noisy}

    persons = _csv(spark, truth / "persons").where(F.col("hard_negative_of") != "-1")
    negatives = persons.select(F.col("person_id").alias("h"), F.col("hard_negative_of").alias("anchor"),
                               F.col("hard_negative_kind").alias("kind"))
    by_person = found.select("true_person", "predicted")
    together = (negatives.join(by_person.alias("x"), F.col("x.true_person") == F.col("h"))
                .join(by_person.alias("y"), (F.col("y.true_person") == F.col("anchor"))
                      & (F.col("y.predicted") == F.col("x.predicted")))
                .select("h").distinct().withColumn("merged", F.lit(True)))
    hard = (negatives.join(together, "h", "left").groupBy("kind")
            .agg(F.count(F.lit(1)).alias("n"), F.count("merged").alias("merged")).collect())  # two kinds
    pairs_n = sum(r.n for r in hard)
    return {
        "records": records.count(),
        "records_without_link": records.where(F.col("predicted").isNull()).count(),
        "persons_true": records.select("true_person").distinct().count(),
        "persons_predicted": found.select("predicted").distinct().count(),
        "true_pairs": true, "predicted_pairs": predicted, "true_positive_pairs": tp,
        "precision": tp / predicted if predicted else 1.0,
        "recall": tp / true if true else 1.0,
        "hard_negatives": pairs_n,
        "hard_negatives_apart": (pairs_n - sum(r.merged for r in hard)) / pairs_n if pairs_n else 1.0,
        "hard_negatives_by_kind": {r.kind: {"n": r.n, "apart": (r.n - r.merged) / r.n} for r in hard},
        "recall_by_noise_kind": {k: per_kind[k] for k in (*NOISE_KINDS, "none") if k in per_kind},
    }
