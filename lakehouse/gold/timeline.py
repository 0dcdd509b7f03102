"""gold.patient_timeline: one row per clinical event across the region, in the spirit of MEDS.

A code is `SYSTEM//value`: ICD10//E11.9, ICD9CM3//36.06, LOINC//4548-4, ATC//A10BA02; a source code
with no standard mapping keeps its hospital (LOCAL_LAB//H02/GLU); encounters give ADMISSION//INPATIENT,
DISCHARGE//INPATIENT and VISIT//<TYPE>; MEDS_BIRTH (1 January of the de-identified birth year) and
MEDS_DEATH (a stay that ended in death). Each row points back to its silver row (source_table,
source_key). The table is range-partitioned and sorted by person_key: one person's events sit in one
file (or two), and Delta's per-file min/max statistics let a lookup skip the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse.catalog import (
    DIAGNOSIS,
    ENCOUNTER,
    LAB_RESULT,
    MEDICATION,
    PERSON,
    PROCEDURE,
    TIMELINE,
    VITAL_SIGN,
    TableRef,
)

ADMISSION = "ADMISSION//INPATIENT"
DISCHARGE = "DISCHARGE//INPATIENT"
BIRTH = "MEDS_BIRTH"  # meds.birth_code
DEATH = "MEDS_DEATH"  # meds.death_code
VISIT_PREFIX = "VISIT//"
ICD10_PREFIX = "ICD10//"
LOINC_PREFIX = "LOINC//"
TIMELINE_COLUMNS = TIMELINE.columns


@dataclass(frozen=True)
class CodedSource:
    """A silver table whose rows are coded events: which columns hold the key, time, codes and value."""

    table: TableRef
    key: str
    time: str
    system: str  # standard code system, e.g. LOINC
    standard: str  # column of the standard code
    local: str  # system for codes with no standard mapping, e.g. LOCAL_LAB
    value: str | None = None  # numeric value column
    unit: str | None = None
    usable: str | None = None  # boolean column: the value is converted (else the value as sent is text)
    text: str | None = None  # text column (the name as sent) for events with no value


CODED_SOURCES = (
    CodedSource(DIAGNOSIS, "diagnosis_key", "diagnosis_time", "ICD10", "icd10_code", "LOCAL_DX", text="source_name"),
    CodedSource(PROCEDURE, "procedure_key", "procedure_time", "ICD9CM3", "icd9cm3_code", "LOCAL_PROC",
                text="source_name"),
    CodedSource(LAB_RESULT, "lab_key", "result_time", "LOINC", "loinc_code", "LOCAL_LAB", value="value", unit="unit",
                usable="unit_ok"),
    CodedSource(VITAL_SIGN, "vital_key", "measured_at", "LOINC", "loinc_code", "LOCAL_VITAL", value="value",
                unit="unit", usable="unit_ok"),
    CodedSource(MEDICATION, "medication_key", "start_time", "ATC", "atc_code", "LOCAL_DRUG", value="dose",
                unit="dose_unit", text="route"),
)
SOURCE_TABLES = (PERSON, ENCOUNTER, *(s.table for s in CODED_SOURCES))


def _event(df: DataFrame, table: TableRef, key: str, time: Column, code: Column, numeric: Column | None = None,
           text: Column | None = None, unit: Column | None = None, hospital: Column | None = None,
           encounter: Column | None = None) -> DataFrame:
    none = F.lit(None).cast("string")
    return df.select(
        "person_key", time.alias("time"), code.alias("code"),
        (numeric if numeric is not None else F.lit(None)).cast("double").alias("numeric_value"),
        (text if text is not None else none).alias("text_value"),
        (unit if unit is not None else none).alias("unit"),
        (hospital if hospital is not None else F.col("hospital_id")).alias("hospital_id"),
        (encounter if encounter is not None else F.col("encounter_key")).alias("encounter_key"),
        F.lit(table.qualified).alias("source_table"), F.col(key).alias("source_key"))


def encounter_events(encounters: DataFrame) -> DataFrame:
    inpatient = F.col("encounter_type") == "inpatient"
    kind = F.coalesce(F.upper("encounter_type"), F.lit("UNKNOWN"))
    start = F.when(inpatient, F.lit(ADMISSION)).otherwise(F.concat(F.lit(VISIT_PREFIX), kind))
    ended = encounters.where(inpatient & F.col("discharge_time").isNotNull())
    return (_event(encounters, ENCOUNTER, "encounter_key", F.col("admit_time"), start, text=F.col("department"))
            .unionByName(_event(ended, ENCOUNTER, "encounter_key", F.col("discharge_time"), F.lit(DISCHARGE),
                                text=F.col("discharge_disposition")))
            .unionByName(_event(ended.where(F.col("discharge_disposition") == "death"), ENCOUNTER,
                                "encounter_key", F.col("discharge_time"), F.lit(DEATH))))


def coded_events(df: DataFrame, source: CodedSource) -> DataFrame:
    """Mapped codes as SYSTEM//code; unmapped ones as LOCAL_X//hospital/code with the value as sent in text."""
    code = F.when(F.col("is_mapped"), F.concat(F.lit(f"{source.system}//"), F.col(source.standard))).otherwise(
        F.concat(F.lit(f"{source.local}//"), F.col("hospital_id"), F.lit("/"), F.coalesce("source_code", F.lit("?"))))
    numeric = text = unit = None
    if source.value:
        usable = F.col("is_mapped") & (F.col(source.usable) if source.usable else F.lit(True))
        numeric = F.when(usable, F.col(source.value))
        unit = F.when(usable, F.col(source.unit)).otherwise(
            F.col("source_unit") if source.usable else F.col(source.unit))
        text = F.when(~usable, F.col("source_value")) if source.usable else None
    if source.text:
        text = F.col(source.text)
    return _event(df, source.table, source.key, F.col(source.time), code, numeric, text, unit)


def person_attributes(persons: DataFrame) -> DataFrame:
    """One row per person from their hospital records: the most frequent sex, the earliest (top-coded) birth year."""
    return (persons.where(F.col("person_key").isNotNull()).groupBy("person_key")
            .agg(F.mode("sex", deterministic=True).alias("sex"), F.min("birth_year").alias("birth_year")))


def birth_events(persons: DataFrame) -> DataFrame:
    """One per person: their birth year (person_attributes) as 1 January."""
    born = person_attributes(persons)
    return _event(born.where(F.col("birth_year").isNotNull()), PERSON, "person_key",
                  F.make_timestamp(F.col("birth_year"), F.lit(1), F.lit(1), F.lit(0), F.lit(0), F.lit(0)),
                  F.lit(BIRTH), hospital=F.lit(None).cast("string"), encounter=F.lit(None).cast("string"))


def timeline_events(tables: dict[str, DataFrame]) -> DataFrame:
    """Every silver event with a time and a person, from the silver tables by name (unordered)."""
    events = birth_events(tables[PERSON.name]).unionByName(encounter_events(tables[ENCOUNTER.name]))
    for source in CODED_SOURCES:
        events = events.unionByName(coded_events(tables[source.table.name], source))
    return events.where(F.col("time").isNotNull() & F.col("person_key").isNotNull()).select(*TIMELINE_COLUMNS)


def person_timeline(spark: SparkSession, root: str, person_key: str) -> DataFrame:
    """One person's events in time order (data skipping on person_key reads one file or two)."""
    return events_in_order(spark.read.format("delta").load(TIMELINE.path(root)), person_key)


def events_in_order(timeline: DataFrame, person_key: str) -> DataFrame:
    return timeline.where(F.col("person_key") == person_key).orderBy("time", "code")


def file_count(rows: int, rows_per_file: int) -> int:
    return max(1, math.ceil(rows / rows_per_file))


def laid_out(events: DataFrame, files: int) -> DataFrame:
    """`files` contiguous person_key ranges, each sorted by person and time: a person lives in one file."""
    return events.repartitionByRange(files, "person_key").sortWithinPartitions("person_key", "time", "code")
