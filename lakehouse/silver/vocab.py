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
    "status": ("hospital_id", "local_value", "status"),
    "vital_codes": ("hospital_id", "local_code", "loinc_code", "loinc_name"),
    "drug_codes": ("hospital_id", "local_code", "atc_code", "atc_name"),
    "icd10": ("code", "name"),
    "icd9cm3": ("code", "name"),
    "pinyin": ("character", "pinyin", "surname_pinyin"),  # toneless readings, for matching names (EMPI)
    "surnames": ("surname",),  # common Chinese surnames, for finding names in free text
}


def version(vocab_dir: Path) -> str:
    file = vocab_dir / "VERSION"
    if not file.exists():
        raise ConfigError(str(file), "<file>", "vocabulary version file not found")
    return file.read_text().strip()


def _rows(file: Path, columns: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    if not file.exists():
        raise ConfigError(str(file), "<file>", "vocabulary file not found")
    with file.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != columns:
            raise ConfigError(str(file), "<header>", f"expected columns {list(columns)}, got {reader.fieldnames}")
        return tuple(tuple(row[c] for c in columns) for row in reader)


def entries(vocab_dir: Path, name: str) -> tuple[tuple[str, ...], ...]:
    """A vocabulary's rows as read, on the driver (a vocabulary is small)."""
    return _rows(vocab_dir / f"{name}.csv", VOCABS[name])


def cancelled_values(vocab_dir: Path) -> dict[str, list[str]]:
    """hospital -> the status values that cancel a record (status.csv rows whose status is `cancelled`)."""
    found: dict[str, list[str]] = {}
    for hospital_id, local_value, status in _rows(vocab_dir / "status.csv", VOCABS["status"]):
        if status == "cancelled":
            found.setdefault(hospital_id, []).append(local_value)
    return found


def surnames(vocab_dir: Path) -> list[str]:
    """Surnames, compound ones (欧阳) first so a pattern tries them before their first character."""
    return sorted((row[0] for row in _rows(vocab_dir / "surnames.csv", VOCABS["surnames"])), key=len, reverse=True)


def load(spark: SparkSession, vocab_dir: Path, name: str) -> DataFrame:
    """A vocabulary as a broadcast DataFrame of strings (`factor` as double)."""
    columns = VOCABS[name]
    rows = list(entries(vocab_dir, name))
    df = spark.createDataFrame(rows, ", ".join(f"{c} STRING" for c in columns))
    if "factor" in columns:
        df = df.withColumn("factor", F.col("factor").cast("double"))
    return F.broadcast(df)
