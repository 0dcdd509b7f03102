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


# the columns no two rows of a vocabulary may share: a code mapped twice would double every row it maps (and a
# name twice, for ICD-10: a diagnosis without a code is looked up by its name)
UNIQUE = {
    "lab_codes": (("hospital_id", "local_code"),), "vital_codes": (("hospital_id", "local_code"),),
    "drug_codes": (("hospital_id", "local_code"),), "units": (("loinc_code", "source_unit"),),
    "encounter_types": (("hospital_id", "local_value"),), "sex": (("hospital_id", "local_value"),),
    "status": (("hospital_id", "local_value"),), "icd10": (("code",), ("name",)), "icd9cm3": (("code",),),
    "surnames": (("surname",),),
}


def _rows(vocab_dir: Path, name: str) -> tuple[tuple[str, ...], ...]:
    file, columns = vocab_dir / f"{name}.csv", VOCABS[name]
    if not file.exists():
        raise ConfigError(str(file), "<file>", "vocabulary file not found")
    with file.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != columns:
            raise ConfigError(str(file), "<header>", f"expected columns {list(columns)}, got {reader.fieldnames}")
        rows, seen = [], {}
        for row in reader:
            for unique in UNIQUE.get(name, ()):
                value = tuple(row[c] for c in unique)
                if (unique, value) in seen:
                    raise ConfigError(str(file), f"line {reader.line_num}",
                                      f"{', '.join(unique)} {', '.join(value)} is on line {seen[unique, value]} "
                                      "already: each may be mapped once")
                seen[unique, value] = reader.line_num
            rows.append(tuple(row[c] for c in columns))
        return tuple(rows)


def validate(vocab_dir: Path) -> None:
    """Read every vocabulary (headers, keys mapped once), before a refine touches any table."""
    version(vocab_dir)
    for name in VOCABS:
        _rows(vocab_dir, name)


def entries(vocab_dir: Path, name: str) -> tuple[tuple[str, ...], ...]:
    """A vocabulary's rows as read, on the driver (a vocabulary is small)."""
    return _rows(vocab_dir, name)


def cancelled_values(vocab_dir: Path) -> dict[str, list[str]]:
    """hospital -> the status values that cancel a record (status.csv rows whose status is `cancelled`)."""
    found: dict[str, list[str]] = {}
    for hospital_id, local_value, status in _rows(vocab_dir, "status"):
        if status == "cancelled":
            found.setdefault(hospital_id, []).append(local_value)
    return found


def surnames(vocab_dir: Path) -> list[str]:
    """Surnames, compound ones (欧阳) first so a pattern tries them before their first character."""
    return sorted((row[0] for row in _rows(vocab_dir, "surnames")), key=len, reverse=True)


def load(spark: SparkSession, vocab_dir: Path, name: str) -> DataFrame:
    """A vocabulary as a broadcast DataFrame of strings (`factor` as double)."""
    columns = VOCABS[name]
    rows = list(entries(vocab_dir, name))
    df = spark.createDataFrame(rows, ", ".join(f"{c} STRING" for c in columns))
    if "factor" in columns:
        df = df.withColumn("factor", F.col("factor").cast("double"))
    return F.broadcast(df)
