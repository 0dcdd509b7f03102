"""gold.patient_summary: one row per person across the region (de-identified: birth year, never a date)."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakehouse.catalog import PATIENT_SUMMARY
from lakehouse.config import GoldSettings
from lakehouse.gold.timeline import ICD10_PREFIX, LOINC_PREFIX, person_attributes

SECONDS_PER_DAY = 86400


def patient_summary(timeline: DataFrame, encounters: DataFrame, persons: DataFrame, gold: GoldSettings) -> DataFrame:
    """Demographics, hospitals visited, encounter counts, death, active problems and the latest key labs.

    The active problem list holds the ICD-10 codes diagnosed within `problem_lookback_days` before the
    person's last event (their own history, not today's date, so a rebuild on another day agrees).
    """
    people = person_attributes(persons)
    kind = F.col("encounter_type")
    visits = encounters.where(F.col("person_key").isNotNull()).groupBy("person_key").agg(
        F.array_sort(F.collect_set("hospital_id")).alias("hospitals"),
        F.min("admit_time").alias("first_encounter_time"), F.max("admit_time").alias("last_encounter_time"),
        F.count(F.lit(1)).alias("encounters"),
        F.count(F.when(kind == "inpatient", 1)).alias("inpatient_stays"),
        F.count(F.when(kind == "outpatient", 1)).alias("outpatient_visits"),
        F.count(F.when(kind == "emergency", 1)).alias("emergency_visits"),
        F.min(F.when(F.col("discharge_disposition") == "death", F.col("discharge_time"))).alias("death_time"))
    last_event = timeline.groupBy("person_key").agg(F.max("time").alias("last_time"))
    recent = F.col("time") >= F.col("last_time") - F.make_interval(days=F.lit(gold.problem_lookback_days))
    problems = (timeline.where(F.col("code").startswith(ICD10_PREFIX)).join(last_event, "person_key")
                .where(recent).groupBy("person_key")
                .agg(F.array_sort(F.collect_set("code")).alias("problems")))
    key_labs = [f"{LOINC_PREFIX}{code}" for code in gold.key_labs]
    latest = (timeline.where(F.col("code").isin(key_labs) & F.col("numeric_value").isNotNull())
              .groupBy("person_key", "code")
              .agg(F.max_by(F.struct(F.col("time"), F.col("numeric_value").alias("value"), F.col("unit")),
                            F.struct("time", "numeric_value", "unit")).alias("latest"))
              .groupBy("person_key")
              .agg(F.map_from_entries(F.collect_list(F.struct("code", "latest"))).alias("latest_labs")))
    # full: a person whose patient record never came (an orphan encounter) still has a summary
    summary = (people.join(visits, "person_key", "full").join(problems, "person_key", "left")
               .join(latest, "person_key", "left")
               .withColumn("deceased", F.col("death_time").isNotNull())
               .withColumn("hospitals", F.coalesce("hospitals", F.array().cast("array<string>")))
               .withColumn("problems", F.coalesce("problems", F.array().cast("array<string>"))))
    for count in ("encounters", "inpatient_stays", "outpatient_visits", "emergency_visits"):
        summary = summary.withColumn(count, F.coalesce(count, F.lit(0)).cast("bigint"))
    return summary.select(*PATIENT_SUMMARY.columns)
