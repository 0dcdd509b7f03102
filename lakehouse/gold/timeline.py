"""gold.patient_timeline: one row per clinical event (MEDS-like: subject, time, code, value) with lineage."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakehouse.catalog import TIMELINE

ADMISSION = "ADMISSION//INPATIENT"
DISCHARGE = "DISCHARGE//INPATIENT"
VISIT_PREFIX = "VISIT//"
ICD10_PREFIX = "ICD10//"
LOINC_PREFIX = "LOINC//"
TIMELINE_COLUMNS = TIMELINE.columns


def encounter_events(encounters: DataFrame) -> DataFrame:
    inpatient = F.col("encounter_type") == "inpatient"
    start = (encounters
             .select("person_key", F.col("admit_time").alias("time"),
                     F.when(inpatient, F.lit(ADMISSION))
                     .otherwise(F.concat(F.lit(VISIT_PREFIX), F.upper("encounter_type"))).alias("code"),
                     F.lit(None).cast("double").alias("numeric_value"), F.col("department").alias("text_value"),
                     F.lit(None).cast("string").alias("unit"), "hospital_id", "encounter_key",
                     F.lit("silver.encounter").alias("source_table"), F.col("encounter_key").alias("source_key")))
    end = (encounters.where(inpatient & F.col("discharge_time").isNotNull())
           .select("person_key", F.col("discharge_time").alias("time"), F.lit(DISCHARGE).alias("code"),
                   F.lit(None).cast("double").alias("numeric_value"),
                   F.col("discharge_disposition").alias("text_value"), F.lit(None).cast("string").alias("unit"),
                   "hospital_id", "encounter_key", F.lit("silver.encounter").alias("source_table"),
                   F.col("encounter_key").alias("source_key")))
    return start.unionByName(end)


def diagnosis_events(diagnoses: DataFrame) -> DataFrame:
    code = F.when(F.col("is_mapped"), F.concat(F.lit(ICD10_PREFIX), "icd10_code")).otherwise(
        F.concat(F.lit("LOCAL_DX//"), "hospital_id", F.lit("/"), F.coalesce("source_code", F.lit("?"))))
    return diagnoses.select("person_key", F.col("diagnosis_time").alias("time"), code.alias("code"),
                            F.lit(None).cast("double").alias("numeric_value"), F.col("source_name").alias("text_value"),
                            F.lit(None).cast("string").alias("unit"), "hospital_id", "encounter_key",
                            F.lit("silver.diagnosis").alias("source_table"), F.col("diagnosis_key").alias("source_key"))


def lab_events(labs: DataFrame) -> DataFrame:
    code = F.when(F.col("is_mapped"), F.concat(F.lit(LOINC_PREFIX), "loinc_code")).otherwise(
        F.concat(F.lit("LOCAL_LAB//"), "hospital_id", F.lit("/"), F.coalesce("source_code", F.lit("?"))))
    usable = F.col("unit_ok") & F.col("is_mapped")
    return labs.select("person_key", F.col("result_time").alias("time"), code.alias("code"),
                       F.when(usable, F.col("value")).alias("numeric_value"),
                       F.when(~usable, F.col("source_value")).alias("text_value"),
                       F.when(usable, F.col("unit")).otherwise(F.col("source_unit")).alias("unit"),
                       "hospital_id", "encounter_key", F.lit("silver.lab_result").alias("source_table"),
                       F.col("lab_key").alias("source_key"))


def build_timeline(encounters: DataFrame, diagnoses: DataFrame, labs: DataFrame) -> DataFrame:
    """Every silver event with a time, laid out by person so one person's read touches few files."""
    events = encounter_events(encounters).unionByName(diagnosis_events(diagnoses)).unionByName(lab_events(labs))
    return (events.where(F.col("time").isNotNull() & F.col("person_key").isNotNull())
            .repartition("person_key")
            .sortWithinPartitions("person_key", "time", "code")
            .select(*TIMELINE_COLUMNS))
