"""Reconciliation: every landed file's ledger row against what bronze and quarantine really hold for it."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import io
from lakehouse.bronze.ingest import LANDED, rows_per_file
from lakehouse.catalog import INGEST_LEDGER
from lakehouse.config import Settings


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
