"""Reconciliation: every landed file's ledger row against what bronze and quarantine really hold for it."""

from __future__ import annotations

from functools import reduce

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import io
from lakehouse.bronze.ingest import LANDED
from lakehouse.catalog import BRONZE, INGEST_LEDGER, QUARANTINE
from lakehouse.config import Settings

_COUNTS = "path STRING, batch_id STRING, bronze_rows BIGINT, quarantine_rows BIGINT"


def rows_per_file(spark: SparkSession, settings: Settings) -> DataFrame:
    """(path, batch_id, bronze_rows, quarantine_rows) over every bronze table and ops.quarantine."""
    parts = [io.read(spark, ref, settings.root)
             .select(F.col("_source_file").alias("path"), F.col("_batch_id").alias("batch_id"),
                     F.lit(1).alias("bronze_rows"), F.lit(0).alias("quarantine_rows"))
             for ref in BRONZE.values() if io.exists(spark, ref, settings.root)]
    if io.exists(spark, QUARANTINE, settings.root):
        parts.append(io.read(spark, QUARANTINE, settings.root).where(F.col("layer") == "bronze")
                     .select(F.col("source_file").alias("path"), "batch_id", F.lit(0).alias("bronze_rows"),
                             F.lit(1).alias("quarantine_rows")))
    if not parts:
        return spark.createDataFrame([], _COUNTS)
    return (reduce(DataFrame.unionByName, parts).groupBy("path", "batch_id")
            .agg(F.sum("bronze_rows").cast("bigint").alias("bronze_rows"),
                 F.sum("quarantine_rows").cast("bigint").alias("quarantine_rows")))


def reconcile(spark: SparkSession, settings: Settings) -> DataFrame:
    """One row per landed file version: rows read = landed + quarantined, landed = its rows in bronze and
    quarantined = its rows in ops.quarantine (rows in the tables without a ledger row are mismatches too)."""
    ledger = io.read_or_empty(spark, INGEST_LEDGER, settings.root).where(F.col("status") == LANDED)
    joined = ledger.join(rows_per_file(spark, settings), ["path", "batch_id"], "full_outer")
    zero = F.lit(0).cast("bigint")
    return (joined
            .select("path", "batch_id", "entity", "hospital_id", "rows_read", "rows_landed", "rows_quarantined",
                    F.coalesce("bronze_rows", zero).alias("bronze_rows"),
                    F.coalesce("quarantine_rows", zero).alias("quarantine_rows"))
            .withColumn("balanced", F.coalesce(
                (F.col("rows_read") == F.col("rows_landed") + F.col("rows_quarantined"))
                & (F.col("rows_landed") == F.col("bronze_rows"))
                & (F.col("rows_quarantined") == F.col("quarantine_rows")), F.lit(False))))
