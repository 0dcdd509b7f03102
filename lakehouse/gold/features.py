"""Leakage-safe features and labels of a prediction task (conf/tasks/<task>.yaml, conf/features.yaml).

Index events come from silver stays (admission or discharge plus an offset); features come from the
timeline strictly before each index time, in the task's look-back windows; labels come only from the
outcome window after it. The history join itself bounds event time by `index_time + end_hours`
(0 hours, enforced by config), so no feature expression can see the index moment or later.

Column names: labs_<name>_<stat>_<window>, vitals_<name>_<stat>_<window>, comorbidity_<name>,
utilisation_<name>_<window>, age, sex_male, stay_hours.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from lakehouse.config import FeatureCatalog, LookbackWindow, MeasurementSet, TaskSpec
from lakehouse.gold.timeline import ADMISSION, DEATH, DISCHARGE, person_attributes

INDEX_KEYS = ("person_key", "encounter_key", "hospital_id", "index_time")
SECONDS_PER_DAY = 86400


# --- names (pure: config validation derives the feature table's columns from them) -------------------

def _measurements(task: TaskSpec, catalog: FeatureCatalog) -> Iterator[tuple[str, str, MeasurementSet]]:
    for set_name in ("labs", "vitals"):
        if set_name in task.feature_sets:
            measurement_set = getattr(catalog, set_name)
            for name, code in measurement_set.codes.items():
                yield f"{set_name}_{name}", code, measurement_set


def feature_names(task: TaskSpec, catalog: FeatureCatalog) -> list[str]:
    """The task's feature columns in table order."""
    names = []
    if "demographics" in task.feature_sets:
        names += ["age", "sex_male"]
    if "stay" in task.feature_sets:
        names.append("stay_hours")
    for prefix, _, measurement_set in _measurements(task, catalog):
        names += [f"{prefix}_{stat}_{w.name}" for w in task.lookback for stat in measurement_set.stats]
    if "comorbidities" in task.feature_sets:
        names += [f"comorbidity_{name}" for name in catalog.comorbidities]
    if "utilisation" in task.feature_sets:
        names += [f"utilisation_{name}_{w.name}" for name in catalog.utilisation for w in task.lookback]
    return names


# --- index events -------------------------------------------------------------------------------------

def index_events(task: TaskSpec, catalog: FeatureCatalog, encounters: DataFrame, persons: DataFrame,
                 cohort: DataFrame | None = None) -> DataFrame:
    """Eligible index events: one per inpatient stay, at admission or discharge plus the offset."""
    stays = encounters.where((F.col("encounter_type") == "inpatient") & F.col("person_key").isNotNull()
                             & F.col("admit_time").isNotNull())
    anchor = "admit_time" if task.index.event == "inpatient_admission" else "discharge_time"
    index_time = F.col(anchor) + F.expr(f"INTERVAL {task.index.offset_hours} HOURS")
    index = (stays.where(F.col(anchor).isNotNull())
             .select("person_key", "encounter_key", "hospital_id", "admit_time", "discharge_time",
                     "discharge_disposition", index_time.alias("index_time"))
             .join(person_attributes(persons), "person_key", "left")
             .withColumn("age", F.least(F.year("index_time") - F.col("birth_year"), F.lit(catalog.max_age))))
    ended_by_index = F.col("discharge_time").isNotNull() & (F.col("discharge_time") <= F.col("index_time"))
    if "died_before_index" in task.exclusions:
        index = index.where(~(ended_by_index & (F.coalesce("discharge_disposition", F.lit("")) == "death")))
    if "discharged_before_index" in task.exclusions:
        index = index.where(~ended_by_index)
    age = task.eligibility.age
    if age is not None and age.min is not None:
        index = index.where(F.col("age") >= age.min)
    if age is not None and age.max is not None:
        index = index.where(F.col("age") <= age.max)
    if cohort is not None:  # joined the cohort before the index: membership itself must not leak
        members = cohort.select(F.col("person_key").alias("m_person"), F.col("index_time").alias("m_time"))
        index = index.join(members, (F.col("m_person") == F.col("person_key"))
                           & (F.col("m_time") < F.col("index_time")), "left_semi")
    return index.select(*INDEX_KEYS, "admit_time", "age", "sex")


# --- features from history ----------------------------------------------------------------------------

def _in_window(window: LookbackWindow) -> Column:
    start = F.col("index_time") - F.expr(f"INTERVAL {window.hours} HOURS")
    end = F.col("index_time") + F.expr(f"INTERVAL {window.end_hours} HOURS")
    return (F.col("h_time") >= start) & (F.col("h_time") < end)


def _stat(stat: str, value: Column, when: Column) -> Column:
    if stat == "count":
        return F.count(F.when(when, 1))
    if stat == "last":
        return F.max(F.when(when, F.struct(F.col("h_time"), value))).getField("h_value")
    if stat == "slope":  # per day, by least squares; days counted from the index keep the sums well conditioned
        days = (F.col("h_time").cast("long") - F.col("index_time").cast("long")) / SECONDS_PER_DAY
        return F.regr_slope(F.when(when, value), F.when(when, days))
    return {"min": F.min, "max": F.max, "mean": F.avg}[stat](F.when(when, value))


def _starts_with_any(column: str, prefixes: list[str]) -> Column:
    return F.greatest(*[F.col(column).startswith(p) for p in prefixes]) if len(prefixes) > 1 \
        else F.col(column).startswith(prefixes[0])


def history_aggregates(task: TaskSpec, catalog: FeatureCatalog) -> list[Column]:
    """One aggregate per history feature, over rows h_* of the person's events before the index."""
    aggregates = []
    for prefix, code, measurement_set in _measurements(task, catalog):
        for window in task.lookback:
            when = _in_window(window) & (F.col("h_code") == code) & F.col("h_value").isNotNull()
            aggregates += [_stat(stat, F.col("h_value"), when).alias(f"{prefix}_{stat}_{window.name}")
                           for stat in measurement_set.stats]
    if "comorbidities" in task.feature_sets:
        longest = max(task.lookback, key=lambda w: w.hours)
        for name, prefixes in catalog.comorbidities.items():
            hit = _in_window(longest) & _starts_with_any("h_code", prefixes)
            aggregates.append(F.max(F.when(hit, 1).otherwise(0)).alias(f"comorbidity_{name}"))
    if "utilisation" in task.feature_sets:
        other_stay = ~F.col("h_encounter_key").eqNullSafe(F.col("encounter_key"))
        for name, codes in catalog.utilisation.items():
            for window in task.lookback:
                hit = _in_window(window) & F.col("h_code").isin(codes) & other_stay
                aggregates.append(F.count(F.when(hit, 1)).alias(f"utilisation_{name}_{window.name}"))
    return aggregates


def _wanted_codes(task: TaskSpec, catalog: FeatureCatalog) -> Column:
    codes = [code for _, code, _ in _measurements(task, catalog)]
    prefixes = []
    if "comorbidities" in task.feature_sets:
        prefixes = [p for group in catalog.comorbidities.values() for p in group]
    if "utilisation" in task.feature_sets:
        codes += [c for group in catalog.utilisation.values() for c in group]
    wanted = F.col("code").isin(codes) if codes else F.lit(False)
    return wanted | _starts_with_any("code", prefixes) if prefixes else wanted


def history_features(index: DataFrame, timeline: DataFrame, task: TaskSpec, catalog: FeatureCatalog) -> DataFrame:
    """INDEX_KEYS plus every history feature; persons with no history get counts 0 and nulls."""
    aggregates = history_aggregates(task, catalog)
    if not aggregates:
        return index.select(*INDEX_KEYS)
    history = timeline.where(_wanted_codes(task, catalog)).select(
        F.col("person_key").alias("h_person"), F.col("time").alias("h_time"), F.col("code").alias("h_code"),
        F.col("numeric_value").alias("h_value"), F.col("encounter_key").alias("h_encounter_key"))
    longest = max(task.lookback, key=lambda w: w.hours)
    latest_end = max(w.end_hours for w in task.lookback)
    bound = (F.col("h_time") >= F.col("index_time") - F.expr(f"INTERVAL {longest.hours} HOURS")) \
        & (F.col("h_time") < F.col("index_time") + F.expr(f"INTERVAL {latest_end} HOURS"))
    joined = index.select(*INDEX_KEYS).join(history, (F.col("h_person") == F.col("person_key")) & bound, "left")
    return joined.groupBy(*INDEX_KEYS).agg(*aggregates)


# --- labels from the outcome window only ---------------------------------------------------------------

def labels(index: DataFrame, timeline: DataFrame, task: TaskSpec, data_end: dt.date) -> DataFrame:
    """(person_key, encounter_key, index_time, label): 1 when the outcome happens in the window after the index,
    0 when it does not and the window is over, null while it is still open (those rows are scored, not trained)."""
    after = timeline.where(F.col("code").isin(ADMISSION, DEATH, DISCHARGE)).select(
        F.col("person_key").alias("o_person"), F.col("time").alias("o_time"), F.col("code").alias("o_code"),
        F.col("encounter_key").alias("o_enc"))
    keys = index.select("person_key", "encounter_key", "index_time")
    joined = keys.join(after, (F.col("o_person") == F.col("person_key")) & (F.col("o_time") > F.col("index_time")),
                       "left")
    if task.outcome.kind == "admission":
        end = F.col("index_time") + F.expr(f"INTERVAL {task.outcome.window_days} DAYS")
        other_stay = ~F.col("o_enc").eqNullSafe(F.col("encounter_key"))
        hit = (F.col("o_code") == ADMISSION) & (F.col("o_time") <= end) & other_stay
        closed = F.max(end) < F.lit(dt.datetime.combine(data_end, dt.time()))
    else:  # death_in_stay: the index stay's own end, after the index
        same_stay = F.col("o_enc") == F.col("encounter_key")
        hit = same_stay & (F.col("o_code") == DEATH)
        closed = F.max(F.when(same_stay & (F.col("o_code") == DISCHARGE), 1)).isNotNull()
    label = F.when(F.max(F.when(hit, 1)).isNotNull(), 1).when(closed, 0)
    return joined.groupBy("person_key", "encounter_key", "index_time").agg(label.cast("int").alias("label"))


# --- the feature table ----------------------------------------------------------------------------------

def features_for(index: DataFrame, timeline: DataFrame, task: TaskSpec, catalog: FeatureCatalog,
                 data_end: dt.date) -> DataFrame:
    """One row per index event: keys, the task's features in order (doubles), the label."""
    static = {
        "age": F.col("age"),
        "sex_male": F.when(F.col("sex") == "male", 1).when(F.col("sex") == "female", 0),
        "stay_hours": (F.col("index_time").cast("long") - F.col("admit_time").cast("long")) / 3600,
    }
    joined = (index.join(history_features(index, timeline, task, catalog), list(INDEX_KEYS))
              .join(labels(index, timeline, task, data_end), ["person_key", "encounter_key", "index_time"]))
    return joined.select(*INDEX_KEYS, *[static.get(n, F.col(n)).cast("double").alias(n) for n in task.features],
                         "label")


def build_features(task: TaskSpec, catalog: FeatureCatalog, encounters: DataFrame, persons: DataFrame,
                   timeline: DataFrame, versions: dict[str, int], data_end: dt.date,
                   cohort: DataFrame | None = None) -> DataFrame:
    """gold.features_<task>: features_for every eligible index event, with the Delta versions read."""
    index = index_events(task, catalog, encounters, persons, cohort)
    source_versions = F.create_map(*[x for name, v in sorted(versions.items()) for x in (F.lit(name), F.lit(v))])
    return features_for(index, timeline, task, catalog, data_end).withColumn(
        "source_versions", source_versions.cast("map<string,bigint>"))
