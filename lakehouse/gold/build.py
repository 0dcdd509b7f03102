"""The gold stage: silver -> timeline -> summary, cohorts, indicators and each task's feature table.

A build is incremental when the previous successful build had today's configuration and every silver
table kept its change data feed since: the persons whose silver rows changed (inserted, updated,
deleted, or moved to another person by the person index) are rebuilt in the timeline, the summary and
the cohorts, and the days their stays touch in the indicators; everything else is left as it was. A
moved as-of day rebuilds the cohorts and indicators that count from it in full; the feature tables are
rebuilt in full every time.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import io
from lakehouse.catalog import (
    COHORT_ATTRITION,
    COHORT_STEPS,
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
from lakehouse.gold.cohort import attrition, evaluate
from lakehouse.gold.features import build_features
from lakehouse.gold.indicators import inpatient_daily, registry_sizes, touched_days
from lakehouse.gold.summary import patient_summary
from lakehouse.gold.timeline import SOURCE_TABLES, file_count, laid_out, timeline_events
from lakehouse.io import Written

INPUTS = SOURCE_TABLES
PERSON_KEY = ("person_key",)


@dataclass
class BuildResult:
    written: list[Written] = field(default_factory=list)
    mode: str = "full"
    reason: str = ""
    persons: int | None = None  # persons rebuilt by an increment
    days: int | None = None  # indicator days rebuilt by an increment

    def summary(self) -> str:
        if self.mode == "full":
            return f"full build ({self.reason})"
        days = (f"{self.days} indicator days" if self.days is not None
                else "indicators in full (the as-of day moved)")
        return f"increment: {self.persons} persons and {days} rebuilt"


@dataclass
class Changes:
    """What silver changed since the last build: persons (one column, materialized) and stays (both images)."""

    persons: DataFrame
    stays: DataFrame


def build_inputs(spark: SparkSession, settings: Settings) -> list[Written]:
    return [io.describe(spark, ref, settings.root) for ref in INPUTS]


def outputs(settings: Settings) -> list:
    cohorts = [cohort_table(name) for name in settings.cohorts]
    cohort_state = [COHORT_STEPS, COHORT_ATTRITION] if cohorts else []
    registry = [INDICATOR_REGISTRY] if any(c.registry for c in settings.cohorts.values()) else []
    return ([TIMELINE, PATIENT_SUMMARY, *cohorts, *cohort_state, INDICATOR_INPATIENT_DAILY, *registry]
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


def silver_changes(spark: SparkSession, settings: Settings, previous: dict[str, int],
                   current: dict[str, int]) -> Changes | None:
    """Persons and stays changed between the versions the last build read and now; None when a table's
    change data feed does not cover the range (then only a full build is right)."""
    persons, stays = [], []
    try:
        for ref in INPUTS:
            start, end = previous.get(ref.qualified), current[ref.qualified]
            if start is None or end < start:
                return None
            if end == start:
                continue
            feed = (spark.read.format("delta").option("readChangeFeed", "true")
                    .option("startingVersion", start + 1).option("endingVersion", end).load(ref.path(settings.root)))
            persons.append(feed.select("person_key"))
            if ref is ENCOUNTER:
                stays.append(feed.select("admit_time", "discharge_time"))
        no_stays = spark.createDataFrame([], "admit_time TIMESTAMP, discharge_time TIMESTAMP")
        if not persons:
            return Changes(spark.createDataFrame([], "person_key STRING"), no_stays)
        touched = persons[0]
        for frame in persons[1:]:
            touched = touched.unionByName(frame)
        touched = touched.where(F.col("person_key").isNotNull()).distinct().localCheckpoint()
    except AnalysisException:  # change data was not recorded for part of the range
        return None
    return Changes(touched, stays[0] if stays else no_stays)


def write_timeline(spark: SparkSession, settings: Settings, silver: dict[str, DataFrame], rows: int) -> Written:
    """Overwrite the timeline in person_key ranges sized from `rows`, the silver tables' row count."""
    files = file_count(rows, settings.main.gold.timeline_rows_per_file)
    return io.overwrite(spark, laid_out(timeline_events(silver), files), TIMELINE, settings.root)


def _previous_as_of(spark: SparkSession, ref, root: str, where: str | None = None) -> dt.date | None:
    if not io.exists(spark, ref, root):
        return None
    rows = io.read(spark, ref, root)
    row = (rows.where(where) if where else rows).select("as_of").first()
    return row[0] if row else None


@dataclass(frozen=True)
class EvaluatedCohort:
    """A cohort definition evaluated on the timeline, nothing written: its members (gold.cohort_<name> rows)
    and per-person steps (gold.cohort_steps rows), both lazy, and the as-of day they count from."""

    spec: CohortSpec
    as_of: dt.date
    members: DataFrame
    steps: DataFrame

    def attrition(self, spark: SparkSession) -> DataFrame:
        """The attrition of these steps (gold.cohort_attrition rows: one small row per step)."""
        return attrition(spark, self.spec, self.steps, self.as_of)


def evaluate_cohort(settings: Settings, spec: CohortSpec, timeline: DataFrame, silver: dict[str, DataFrame],
                    as_of: dt.date | None = None, touched: DataFrame | None = None) -> EvaluatedCohort:
    """The cohort's members and steps (only `touched` persons' when given) as of `as_of`, else the
    cohort's own as_of, gold.as_of or the day after the data ends."""
    as_of = as_of or as_of_day(settings, timeline, spec)
    encounters, persons = silver[ENCOUNTER.name], silver[PERSON.name]
    if touched is not None:
        timeline, encounters, persons = (df.join(touched, "person_key", "left_semi")
                                         for df in (timeline, encounters, persons))
    result = evaluate(spec, timeline, encounters, persons, as_of)
    return EvaluatedCohort(spec, as_of, result.members, result.steps)


def write_cohort(spark: SparkSession, settings: Settings, cohort: EvaluatedCohort,
                 touched: DataFrame | None = None) -> tuple[DataFrame, list[Written]]:
    """Write an evaluated cohort: gold.cohort_<name> and its gold.cohort_steps rows (all of them, or with
    `touched` only those persons'), then its attrition from every step on record."""
    spec, root, ref = cohort.spec, settings.root, cohort_table(cohort.spec.name)
    mine = f"cohort = '{spec.name}'"  # a name is [a-z0-9_]
    if touched is None:
        written = [io.overwrite(spark, cohort.members, ref, root),
                   io.replace_where(spark, cohort.steps, COHORT_STEPS, root, mine)]
    else:
        written = [io.replace_groups(spark, cohort.members, ref, root, touched, PERSON_KEY),
                   io.replace_groups(spark, cohort.steps, COHORT_STEPS, root,
                                     touched.withColumn("cohort", F.lit(spec.name)), ("cohort", "person_key"))]
    table = attrition(spark, spec, io.read(spark, COHORT_STEPS, root).where(mine), cohort.as_of)
    written.append(io.replace_where(spark, table, COHORT_ATTRITION, root, mine))
    return table, written


def run_cohort(spark: SparkSession, settings: Settings, spec: CohortSpec, timeline: DataFrame,
               silver: dict[str, DataFrame], as_of: dt.date | None = None,
               touched: DataFrame | None = None) -> tuple[DataFrame, list[Written]]:
    """gold.cohort_<name>, its gold.cohort_steps rows and its gold.cohort_attrition rows: all of them, or with
    `touched` only those persons' (the as-of day must be the one the cohort was last built with)."""
    cohort = evaluate_cohort(settings, spec, timeline, silver, as_of, touched)
    return write_cohort(spark, settings, cohort, touched)


def build(spark: SparkSession, settings: Settings, previous: dict[str, int] | None = None,
          full: bool = False, inputs: list[Written] | None = None) -> BuildResult:
    """Incremental from `previous` (the input versions of the last successful build) when possible;
    `inputs`: the silver tables as the job run already described them (else described here)."""
    inputs = inputs or build_inputs(spark, settings)
    current = {w.table: w.version for w in inputs}
    missing = [ref.qualified for ref in outputs(settings) if not io.exists(spark, ref, settings.root)]
    reason = ("asked for" if full else "no previous build with this configuration" if previous is None
              else f"{missing[0]} does not exist" if missing else "")
    changes = None if reason else silver_changes(spark, settings, previous, current)
    if changes is None and not reason:
        reason = "the change data feed does not cover every silver change since the last build"
    if changes is None:
        return build_full(spark, settings, reason, sum(w.rows for w in inputs))
    return build_increment(spark, settings, changes)


def build_full(spark: SparkSession, settings: Settings, reason: str, rows: int | None = None) -> BuildResult:
    """Everything from silver; `rows` (silver's row count, sizing the timeline's files) is counted if not given."""
    root = settings.root
    silver = silver_tables(spark, settings)
    result = BuildResult(mode="full", reason=reason)
    rows = rows if rows is not None else sum(w.rows for w in build_inputs(spark, settings))
    result.written.append(write_timeline(spark, settings, silver, rows))
    timeline = io.read(spark, TIMELINE, root, version=result.written[0].version)
    encounters, persons = silver[ENCOUNTER.name], silver[PERSON.name]
    result.written.append(io.overwrite(spark, patient_summary(timeline, encounters, persons, settings.main.gold),
                                       PATIENT_SUMMARY, root))
    as_of = as_of_day(settings, timeline)  # one scan for the data's end, shared by cohorts and indicators
    for spec in settings.cohorts.values():
        result.written.extend(run_cohort(spark, settings, spec, timeline, silver, spec.as_of or as_of)[1])
    result.written.append(io.overwrite(spark, inpatient_daily(spark, encounters, settings.beds, as_of),
                                       INDICATOR_INPATIENT_DAILY, root))
    result.written.extend(_registry_and_features(spark, settings, silver, result.written[0].version))
    return result


def build_increment(spark: SparkSession, settings: Settings, changes: Changes) -> BuildResult:
    root, touched = settings.root, changes.persons
    silver = silver_tables(spark, settings)
    result = BuildResult(mode="increment", persons=touched.count())
    mine = {name: df.join(touched, "person_key", "left_semi") for name, df in silver.items()}
    result.written.append(io.replace_groups(spark, timeline_events(mine), TIMELINE, root, touched, PERSON_KEY))
    timeline = io.read(spark, TIMELINE, root, version=result.written[0].version)
    summary = patient_summary(timeline.join(touched, "person_key", "left_semi"), mine[ENCOUNTER.name],
                              mine[PERSON.name], settings.main.gold)
    result.written.append(io.replace_groups(spark, summary, PATIENT_SUMMARY, root, touched, PERSON_KEY))
    default_as_of = as_of_day(settings, timeline)
    for spec in settings.cohorts.values():
        as_of = spec.as_of or default_as_of
        same_day = _previous_as_of(spark, COHORT_ATTRITION, root, f"cohort = '{spec.name}'") == as_of
        result.written.extend(run_cohort(spark, settings, spec, timeline, silver, as_of,
                                         touched if same_day else None)[1])
    encounters = silver[ENCOUNTER.name]
    if _previous_as_of(spark, INDICATOR_INPATIENT_DAILY, root) == default_as_of:
        days = touched_days(changes.stays, default_as_of).localCheckpoint()
        result.days = days.count()
        rows = inpatient_daily(spark, encounters, settings.beds, default_as_of).join(days, "day", "left_semi")
        result.written.append(io.replace_groups(spark, rows, INDICATOR_INPATIENT_DAILY, root, days, ("day",)))
    else:
        result.written.append(io.overwrite(spark, inpatient_daily(spark, encounters, settings.beds, default_as_of),
                                           INDICATOR_INPATIENT_DAILY, root))
    result.written.extend(_registry_and_features(spark, settings, silver, result.written[0].version))
    return result


def _registry_and_features(spark: SparkSession, settings: Settings, silver: dict[str, DataFrame],
                           timeline_version: int) -> list[Written]:
    """Registry sizes from the cohort tables; each task's features from the timeline (both in full)."""
    root, written = settings.root, []
    registries = {name: io.read(spark, cohort_table(name), root)
                  for name, spec in settings.cohorts.items() if spec.registry}
    sizes = registry_sizes(registries)
    if sizes is not None:
        written.append(io.overwrite(spark, sizes, INDICATOR_REGISTRY, root))
    timeline = io.read(spark, TIMELINE, root, version=timeline_version)
    if settings.tasks:
        end = data_end(timeline)
        versions = {TIMELINE.qualified: timeline_version,
                    **{ref.qualified: io.latest_version(spark, ref, root) for ref in (ENCOUNTER, PERSON)}}
    for task in settings.tasks.values():
        cohort = task.eligibility.cohort
        members = io.read(spark, cohort_table(cohort), root) if cohort else None
        features = build_features(task, settings.features, silver[ENCOUNTER.name], silver[PERSON.name], timeline,
                                  versions, end, members)
        written.append(io.overwrite(spark, features, features_table(task.name, task.features), root))
    return written
