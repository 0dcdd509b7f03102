"""The gold stage: silver -> timeline -> summary, cohorts, indicators and each task's feature table."""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import io
from lakehouse.catalog import (
    COHORT_ATTRITION,
    ENCOUNTER,
    INDICATOR_INPATIENT_DAILY,
    INDICATOR_REGISTRY,
    PATIENT_SUMMARY,
    PERSON,
    TIMELINE,
    cohort_table,
    features_table,
)
from lakehouse.config import CohortSpec, Settings
from lakehouse.gold.cohort import CohortResult, evaluate
from lakehouse.gold.features import build_features
from lakehouse.gold.indicators import inpatient_daily, registry_sizes
from lakehouse.gold.summary import patient_summary
from lakehouse.gold.timeline import SOURCE_TABLES, file_count, laid_out, timeline_events
from lakehouse.io import Written

INPUTS = SOURCE_TABLES


def build_inputs(spark: SparkSession, settings: Settings) -> list[Written]:
    return [io.describe(spark, ref, settings.root) for ref in INPUTS]


def outputs(settings: Settings) -> list:
    cohorts = [cohort_table(name) for name in settings.cohorts]
    registry = [INDICATOR_REGISTRY] if any(c.registry for c in settings.cohorts.values()) else []
    return ([TIMELINE, PATIENT_SUMMARY, *cohorts, COHORT_ATTRITION, INDICATOR_INPATIENT_DAILY, *registry]
            + [features_table(t.name, t.features) for t in settings.tasks.values()])


def silver_tables(spark: SparkSession, settings: Settings) -> dict[str, DataFrame]:
    return {ref.name: io.read(spark, ref, settings.root) for ref in INPUTS}


def data_end(timeline: DataFrame) -> dt.date:
    """The day after the last event that is not in the future (a mistyped 2099 must not move it)."""
    last = timeline.where(F.col("time") <= F.current_timestamp()).agg(F.max("time")).first()[0]
    return (last.date() if last else dt.date.today()) + dt.timedelta(days=1)


def as_of_day(settings: Settings, timeline: DataFrame, spec: CohortSpec | None = None) -> dt.date:
    """A cohort's own as_of, else gold.as_of from config, else the day after the data ends."""
    if spec is not None and spec.as_of is not None:
        return spec.as_of
    return settings.main.gold.as_of or data_end(timeline)


def write_timeline(spark: SparkSession, settings: Settings, silver: dict[str, DataFrame]) -> Written:
    """Overwrite the timeline in person_key ranges sized from the silver row counts (answered by Delta stats)."""
    rows = sum(io.describe(spark, ref, settings.root).rows for ref in INPUTS)
    files = file_count(rows, settings.main.gold.timeline_rows_per_file)
    return io.overwrite(spark, laid_out(timeline_events(silver), files), TIMELINE, settings.root)


def run_cohort(spark: SparkSession, settings: Settings, spec: CohortSpec, timeline: DataFrame,
               silver: dict[str, DataFrame], as_of: dt.date | None = None) -> tuple[CohortResult, list[Written]]:
    """gold.cohort_<name> overwritten, and the cohort's rows of gold.cohort_attrition replaced."""
    as_of = as_of or as_of_day(settings, timeline, spec)
    result = evaluate(spark, spec, timeline, silver[ENCOUNTER.name], silver[PERSON.name], as_of)
    written = [io.overwrite(spark, result.members, cohort_table(spec.name), settings.root),
               io.replace_where(spark, result.attrition, COHORT_ATTRITION, settings.root,
                                f"cohort = '{spec.name}'")]  # a name is [a-z0-9_]
    return result, written


def build(spark: SparkSession, settings: Settings) -> list[Written]:
    root = settings.root
    silver = silver_tables(spark, settings)
    written = [write_timeline(spark, settings, silver)]
    timeline_version = written[0].version
    timeline = io.read(spark, TIMELINE, root, version=timeline_version)
    default_as_of = as_of_day(settings, timeline)
    encounters, persons = silver[ENCOUNTER.name], silver[PERSON.name]
    written.append(io.overwrite(spark, patient_summary(timeline, encounters, persons, settings.main.gold),
                                PATIENT_SUMMARY, root))
    registries = {}
    for spec in settings.cohorts.values():
        _, cohort_written = run_cohort(spark, settings, spec, timeline, silver)
        written.extend(cohort_written)
        if spec.registry:
            registries[spec.name] = io.read(spark, cohort_table(spec.name), root)
    written.append(io.overwrite(spark, inpatient_daily(spark, encounters, settings.beds, default_as_of),
                                INDICATOR_INPATIENT_DAILY, root))
    sizes = registry_sizes(registries)
    if sizes is not None:
        written.append(io.overwrite(spark, sizes, INDICATOR_REGISTRY, root))
    for task in settings.tasks.values():
        features = build_features(encounters, persons, timeline, task, timeline_version)
        written.append(io.overwrite(spark, features, features_table(task.name, task.features), root))
    return written
