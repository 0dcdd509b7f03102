"""How well the free-text scrubber removes the identifiers the generator planted in notes (tests and
benchmarks; never the pipeline).

Recall per kind: a planted value (patient name, relative's name, ID number, phone, MRN) no longer in
the scrubbed text. Precision: of the spans the scrubber removed, the share that are planted values.
Both on the notes as received in bronze (base64 attachments decoded as silver does).
"""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse import io
from lakehouse.catalog import BRONZE
from lakehouse.config import Settings
from lakehouse.silver import vocab
from lakehouse.silver.refine import decoded
from lakehouse.silver.standardize import mask_identifiers, scrub_spans


def scrub_quality(spark: SparkSession, settings: Settings, truth: Path) -> dict:
    surnames = vocab.surnames(settings.vocab_dir)
    planted = (spark.read.option("header", True).csv(str(truth / "note_identifiers" / "*.csv"))
               .select("hospital_id", "note_id", "kind", "value"))
    notes = (io.read(spark, BRONZE["note"], settings.root)
             .select(F.col("_hospital_id").alias("hospital_id"), "note_id",
                     decoded("note_text", "note", settings).alias("text"))
             .dropDuplicates(["hospital_id", "note_id", "text"])
             .cache())
    try:
        masked = notes.select("hospital_id", "note_id", mask_identifiers(F.col("text"), surnames).alias("masked"))
        recall = {r.kind: {"planted": r.n, "recall": r.removed / r.n} for r in (
            planted.join(masked, ["hospital_id", "note_id"])
            .groupBy("kind").agg(F.count(F.lit(1)).alias("n"),
                                 F.sum((~F.col("masked").contains(F.col("value"))).cast("int")).alias("removed"))
            .collect())}  # one row per kind
        spans = notes.select("hospital_id", "note_id", F.explode(scrub_spans(F.col("text"), surnames)).alias("s"))
        judged = (spans.select("hospital_id", "note_id", "s.kind", "s.span")
                  .join(planted.select("hospital_id", "note_id", F.col("value").alias("span"))
                        .distinct().withColumn("ok", F.lit(True)), ["hospital_id", "note_id", "span"], "left"))
        by_kind = {r.kind: {"removed": r.n, "precision": r.ok / r.n} for r in judged.groupBy("kind").agg(
            F.count(F.lit(1)).alias("n"), F.count("ok").alias("ok")).collect()}
        total = judged.agg(F.count(F.lit(1)).alias("n"), F.count("ok").alias("ok")).first()
        measured = sorted(r.hospital_id for r in planted.join(notes, ["hospital_id", "note_id"])
                          .select("hospital_id").distinct().collect())  # a few hospitals
        return {"notes": notes.count(), "hospitals": measured, "recall": recall, "precision_by_kind": by_kind,
                "removed": total.n, "precision": total.ok / total.n if total.n else 1.0}
    finally:
        notes.unpersist()
