"""Reconciliation: every landed file's ledger row against the rows bronze really holds for it."""

from __future__ import annotations

from functools import reduce

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import io
from lakehouse.bronze.ingest import LANDED
from lakehouse.catalog import BRONZE, INGEST_LEDGER
from lakehouse.config import Settings


def bronze_rows_per_file(spark: SparkSession, settings: Settings) -> DataFrame:
    """(path, batch_id, entity, bronze_rows) over every bronze table that exists."""
    parts = [io.read(spark, ref, settings.root)
             .groupBy(F.col("_source_file").alias("path"), F.col("_batch_id").alias("batch_id"))
             .agg(F.count("*").alias("bronze_rows"))
             .withColumn("entity", F.lit(entity))
             for entity, ref in BRONZE.items() if io.exists(spark, ref, settings.root)]
    if not parts:
        return spark.createDataFrame([], "path STRING, batch_id STRING, bronze_rows BIGINT, entity STRING")
    return reduce(DataFrame.unionByName, parts)


def reconcile(spark: SparkSession, settings: Settings) -> DataFrame:
    """One row per ledger row: rows read = landed + quarantined, and landed = rows in bronze for that file
    and batch (a landed file with no bronze rows, or bronze rows with no ledger row, are mismatches too)."""
    ledger = io.read_or_empty(spark, INGEST_LEDGER, settings.root)
    landed = ledger.where(F.col("status") == LANDED)
    bronze = bronze_rows_per_file(spark, settings)
    joined = landed.join(bronze.drop("entity"), ["path", "batch_id"], "full_outer")
    return (joined
            .select("path", "batch_id", "entity", "hospital_id", "rows_read", "rows_landed", "rows_quarantined",
                    F.coalesce("bronze_rows", F.lit(0)).alias("bronze_rows"))
            .withColumn("balanced", F.coalesce(
                (F.col("rows_read") == F.col("rows_landed") + F.col("rows_quarantined"))
                & (F.col("rows_landed") == F.col("bronze_rows")), F.lit(False))))
