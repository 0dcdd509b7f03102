"""Vocabularies as versioned data under conf/vocab/: small tables, read on the driver, broadcast."""

from __future__ import annotations

import csv
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse.errors import ConfigError

VOCABS = {
    "lab_codes": ("hospital_id", "local_code", "loinc_code", "loinc_name"),
    "units": ("loinc_code", "source_unit", "canonical_unit", "factor"),
    "encounter_types": ("hospital_id", "local_value", "encounter_type"),
    "sex": ("hospital_id", "local_value", "sex"),
}


def version(vocab_dir: Path) -> str:
    file = vocab_dir / "VERSION"
    if not file.exists():
        raise ConfigError(str(file), "<file>", "vocabulary version file not found")
    return file.read_text().strip()


def load(spark: SparkSession, vocab_dir: Path, name: str) -> DataFrame:
    """A vocabulary as a broadcast DataFrame of strings (`factor` as double)."""
    file = vocab_dir / f"{name}.csv"
    if not file.exists():
        raise ConfigError(str(file), "<file>", "vocabulary file not found")
    with file.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = VOCABS[name]
        if tuple(reader.fieldnames or ()) != columns:
            raise ConfigError(str(file), "<header>", f"expected columns {list(columns)}, got {reader.fieldnames}")
        rows = [tuple(row[c] for c in columns) for row in reader]
    df = spark.createDataFrame(rows, ", ".join(f"{c} STRING" for c in columns))
    if "factor" in columns:
        df = df.withColumn("factor", F.col("factor").cast("double"))
    return F.broadcast(df)
