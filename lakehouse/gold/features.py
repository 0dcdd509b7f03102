"""Leakage-safe features: computed only from timeline events strictly before each index time.

Features are data: each name maps to an aggregate over the person's history window (events in
[index_time - lookback, index_time)) or to an expression over the index event itself. A task picks
features by name in conf/tasks/<task>.yaml.
"""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from lakehouse.config import TaskSpec
from lakehouse.gold.timeline import ADMISSION, ICD10_PREFIX, LOINC_PREFIX

LOINC_CREATININE, LOINC_HBA1C, LOINC_GLUCOSE = "14682-9", "4548-4", "14749-6"
SECONDS_PER_DAY = 86400


def _last_lab(loinc: str) -> Column:
    event = F.when(F.col("h_code") == f"{LOINC_PREFIX}{loinc}", F.struct(F.col("h_time"), F.col("h_value")))
    return F.max(event).getField("h_value")


def _has_code(prefix_regex: str) -> Column:
    return F.max(F.when(F.col("h_code").rlike(f"^{ICD10_PREFIX}{prefix_regex}"), 1.0).otherwise(0.0))


# aggregates over history rows (h_*), evaluated per index event
# (columns are built lazily: a Column needs a running Spark, and config validation runs before it)
HISTORY_FEATURES: dict[str, Callable[[], Column]] = {
    "prior_admissions": lambda: F.count(F.when((F.col("h_code") == ADMISSION)
                                               & (F.col("h_encounter_key") != F.col("encounter_key")), 1)),
    "diabetes": lambda: _has_code("E1[0-4]"),
    "heart_failure": lambda: _has_code("I50"),
    "ckd": lambda: _has_code("N18"),
    "last_creatinine": lambda: _last_lab(LOINC_CREATININE),
    "last_hba1c": lambda: _last_lab(LOINC_HBA1C),
    "last_glucose": lambda: _last_lab(LOINC_GLUCOSE),
}
# expressions over the index event and the person
INDEX_FEATURES: dict[str, Callable[[], Column]] = {
    "age": lambda: F.least(F.year("index_time") - F.col("birth_year"), F.lit(90)),  # 90 means 90+
    "sex_male": lambda: F.when(F.col("sex") == "male", 1.0).when(F.col("sex") == "female", 0.0),
    "length_of_stay_days": lambda: ((F.col("index_time").cast("long") - F.col("admit_time").cast("long"))
                                    / SECONDS_PER_DAY),
}
FEATURES = {**HISTORY_FEATURES, **INDEX_FEATURES}


def index_events(encounters: DataFrame) -> DataFrame:
    """Inpatient discharges alive: the moment a readmission prediction is made."""
    return (encounters
            .where((F.col("encounter_type") == "inpatient") & F.col("discharge_time").isNotNull()
                   & (F.coalesce(F.col("discharge_disposition"), F.lit("")) != "death"))
            .select("person_key", "encounter_key", "hospital_id", "admit_time",
                    F.col("discharge_time").alias("index_time")))


def labels(index: DataFrame, timeline: DataFrame, task: TaskSpec) -> DataFrame:
    """1 when an outcome event falls in (index_time, index_time + window]; uses nothing before the index."""
    outcomes = timeline.where(F.col("code") == ADMISSION).select(
        F.col("person_key").alias("o_person"), F.col("time").alias("o_time"), F.col("encounter_key").alias("o_enc"))
    window_end = F.col("index_time") + F.make_interval(days=F.lit(task.outcome_window_days))
    hits = index.join(outcomes, (F.col("o_person") == F.col("person_key")) & (F.col("o_time") > F.col("index_time"))
                      & (F.col("o_time") <= window_end) & (F.col("o_enc") != F.col("encounter_key")), "left")
    return (hits.groupBy("person_key", "encounter_key")
            .agg(F.max(F.when(F.col("o_time").isNotNull(), 1).otherwise(0)).alias("label")))


def build_features(encounters: DataFrame, persons: DataFrame, timeline: DataFrame, task: TaskSpec,
                   timeline_version: int) -> DataFrame:
    """One row per eligible index event: the task's features (from history only) and its label."""
    data_end = timeline.agg(F.max("time")).first()[0]
    follow_up = F.col("index_time") + F.make_interval(days=F.lit(task.outcome_window_days)) <= F.lit(data_end)
    index = index_events(encounters).where(follow_up)
    people = persons.groupBy("person_key").agg(F.max("birth_year").alias("birth_year"), F.max("sex").alias("sex"))
    history = timeline.select(F.col("person_key").alias("h_person"), F.col("time").alias("h_time"),
                              F.col("code").alias("h_code"), F.col("numeric_value").alias("h_value"),
                              F.col("encounter_key").alias("h_encounter_key"))
    lookback_start = F.col("index_time") - F.make_interval(days=F.lit(task.lookback_days))
    joined = index.join(history, (F.col("h_person") == F.col("person_key")) & (F.col("h_time") < F.col("index_time"))
                        & (F.col("h_time") >= lookback_start), "left")
    chosen_history = [HISTORY_FEATURES[n]().alias(n) for n in task.features if n in HISTORY_FEATURES]
    keys = ["person_key", "encounter_key", "hospital_id", "admit_time", "index_time"]
    aggregated = joined.groupBy(*keys).agg(*chosen_history) if chosen_history else index
    return (aggregated
            .join(people, "person_key", "left")
            .join(labels(index, timeline, task), ["person_key", "encounter_key"], "left")
            .select("person_key", "encounter_key", "hospital_id", "index_time",
                    *[(INDEX_FEATURES[n]() if n in INDEX_FEATURES else F.col(n)).cast("double").alias(n)
                      for n in task.features],
                    F.col("label").cast("int").alias("label"),
                    F.lit(timeline_version).cast("bigint").alias("timeline_version")))
