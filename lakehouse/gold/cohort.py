"""Cohorts from their YAML definitions (conf/cohorts/<name>.yaml), evaluated on the patient timeline.

Index events are timeline events whose code starts with one of the index codes (a code prefix matches
its descendants: ICD10//E11 matches ICD10//E11.9). Each criterion becomes one boolean per index event;
a member is an index event meeting every inclusion and no exclusion (then the first or last per person
when the definition asks). Events on or after the as-of day are never seen, so a cohort built on
another day from the same data is the same cohort. The attrition table counts the persons left after
each criterion in the order written.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lakehouse.catalog import COHORT_ATTRITION, cohort_table
from lakehouse.config import CohortSpec, Criterion, Range
from lakehouse.config import Window as DayWindow
from lakehouse.gold.timeline import person_attributes

INDEX_KEY = "index_id"


@dataclass
class CohortResult:
    members: DataFrame  # gold.cohort_<name>
    steps: DataFrame  # gold.cohort_steps rows of this cohort (the attrition is their sum)


def as_of_time(as_of: dt.date) -> Column:
    """The as-of instant: midnight at the start of the as-of day (session time zone)."""
    return F.lit(dt.datetime.combine(as_of, dt.time()))


def codes_match(codes: list[str], column: str = "code") -> Column:
    condition = F.lit(False)
    for code in codes:
        condition = condition | F.col(column).startswith(code)
    return condition


def in_window(window: DayWindow | None, time: str, index_time: str, as_of: dt.date) -> Column:
    if window is None:
        return F.lit(True)
    anchor = F.col(index_time) if window.relative_to == "index" else as_of_time(as_of)
    condition = F.lit(True)
    if window.start_days is not None:
        condition = condition & (F.col(time) >= anchor + F.make_interval(days=F.lit(window.start_days)))
    if window.end_days is not None:
        condition = condition & (F.col(time) <= anchor + F.make_interval(days=F.lit(window.end_days)))
    return condition


def in_range(bounds: Range | None, column: str) -> Column:
    if bounds is None:
        return F.lit(True)
    condition = F.col(column).isNotNull()
    if bounds.min is not None:
        condition = condition & (F.col(column) >= bounds.min)
    if bounds.max is not None:
        condition = condition & (F.col(column) <= bounds.max)
    return condition


def attribute(criterion: Criterion) -> Column:
    condition = F.lit(True)
    if criterion.age is not None:
        condition = condition & in_range(criterion.age, "age_at_index")
    if criterion.sex is not None:
        condition = condition & (F.col("sex") == criterion.sex)
    if criterion.encounter_type:
        condition = condition & F.col("encounter_type").isin(criterion.encounter_type)
    return F.coalesce(condition, F.lit(False))


def _related(index: DataFrame, events: DataFrame, codes: list[str], window: DayWindow | None,
             same_encounter: bool, as_of: dt.date, value: Range | None = None) -> DataFrame:
    """(index_id, event) pairs: the person's events with the codes, in the window or the index stay."""
    chosen = (events.where(codes_match(codes) & in_range(value, "numeric_value"))
              .select(F.col("person_key").alias("e_person"), F.col("time").alias("e_time"),
                      F.col("encounter_key").alias("e_encounter"), F.col("numeric_value").alias("e_value"),
                      F.col("unit").alias("e_unit")))
    left = index.select(INDEX_KEY, "person_key", "index_time", "encounter_key")
    condition = F.col("e_person") == F.col("person_key")
    if same_encounter:
        condition = condition & (F.col("e_encounter") == F.col("encounter_key"))
    return left.join(chosen, condition & in_window(window, "e_time", "index_time", as_of))


def event_criterion(index: DataFrame, events: DataFrame, criterion: Criterion, as_of: dt.date) -> DataFrame:
    """(index_id, met) for every index event that has at least one matching event (others: not in the frame)."""
    counted = (_related(index, events, criterion.codes, criterion.window, criterion.same_encounter, as_of,
                        criterion.value)
               .groupBy(INDEX_KEY).agg(F.count(F.lit(1)).alias("n")))
    return counted.select(INDEX_KEY, (F.col("n") >= criterion.min_count).alias("met"))


def with_criteria(index: DataFrame, events: DataFrame, criteria: list[Criterion], as_of: dt.date) -> DataFrame:
    """One boolean column `c_<name>` per criterion."""
    for criterion in criteria:
        column = f"c_{criterion.name}"
        if criterion.is_event:
            met = event_criterion(index, events, criterion, as_of).withColumnRenamed("met", column)
            index = index.join(met, INDEX_KEY, "left").withColumn(column, F.coalesce(column, F.lit(False)))
            if criterion.absent:
                index = index.withColumn(column, ~F.col(column))
        else:
            index = index.withColumn(column, attribute(criterion))
    return index


def index_events(spec: CohortSpec, events: DataFrame, encounters: DataFrame, persons: DataFrame,
                 as_of: dt.date) -> DataFrame:
    people = person_attributes(persons)
    return (events.where(codes_match(spec.index.codes) & in_window(spec.index.window, "time", "time", as_of))
            .select("person_key", F.col("time").alias("index_time"), "encounter_key", "hospital_id")
            .dropDuplicates(["person_key", "index_time", "encounter_key"])
            .withColumn(INDEX_KEY, F.xxhash64("person_key", "index_time", "encounter_key"))
            .join(encounters.select("encounter_key", "encounter_type"), "encounter_key", "left")
            .join(people, "person_key", "left")
            .withColumn("age_at_index", (F.year("index_time") - F.col("birth_year")).cast("int")))


def steps(spec: CohortSpec) -> list[tuple[str, str, Column]]:
    """(criterion, kind, condition) after each step of the attrition, cumulative."""
    out = [("index event", "index", F.lit(True))]
    condition = F.lit(True)
    for criterion in spec.inclusion:
        condition = condition & F.col(f"c_{criterion.name}")
        out.append((criterion.name, "inclusion", condition))
    for criterion in spec.exclusion:
        condition = condition & ~F.col(f"c_{criterion.name}")
        out.append((criterion.name, "exclusion", condition))
    return out


def evaluate(spec: CohortSpec, timeline: DataFrame, encounters: DataFrame, persons: DataFrame,
             as_of: dt.date) -> CohortResult:
    """Members and per-person attrition steps; each person's result depends on their own events only.

    The timeline is scanned once: the events of every code the definition names are kept on the executors
    (a small share of the timeline) for the index, the criteria and the series.
    """
    codes = sorted({*spec.index.codes, *(c for crit in (*spec.inclusion, *spec.exclusion, *spec.flags)
                                         for c in crit.codes), *(c for s in spec.series.values() for c in s.codes)})
    events = timeline.where((F.col("time") < as_of_time(as_of)) & codes_match(codes)).localCheckpoint()
    index = index_events(spec, events, encounters, persons, as_of)
    index = with_criteria(index, events, [*spec.inclusion, *spec.exclusion, *spec.flags], as_of)
    attrition_steps = steps(spec)
    qualified = index.where(attrition_steps[-1][2])
    if spec.index.select != "all":
        order = F.col("index_time").asc() if spec.index.select == "first" else F.col("index_time").desc()
        rank = F.row_number().over(Window.partitionBy("person_key").orderBy(order, F.col("encounter_key")))
        qualified = qualified.withColumn("_rank", rank).where(F.col("_rank") == 1).drop("_rank")
    members = with_series(qualified, events, spec, as_of)
    flags = [F.when(F.col(f"c_{c.name}"), F.lit(c.name)) for c in spec.flags]
    ref = cohort_table(spec.name)
    members = members.select(
        *[c for c in ref.columns if c not in ("criteria_met", "flags", "series", "as_of")],
        F.array(*[F.lit(c.name) for c in spec.inclusion]).cast("array<string>").alias("criteria_met"),
        F.filter(F.array(*flags), lambda f: f.isNotNull()).cast("array<string>").alias("flags") if flags
        else F.array().cast("array<string>").alias("flags"),
        "series", F.lit(as_of).alias("as_of"))
    passed = [F.sum(F.when(cond, 1).otherwise(0)).cast("bigint") for _, _, cond in attrition_steps]
    per_person = index.groupBy("person_key").agg(F.array(*passed).alias("passed"))
    if spec.index.select != "all":  # the selection keeps one index event of each person still in
        per_person = per_person.withColumn(
            "passed", F.concat("passed", F.array(F.least(F.element_at("passed", -1), F.lit(1)).cast("bigint"))))
    person_steps = per_person.select(F.lit(spec.name).alias("cohort"), "person_key", "passed")
    return CohortResult(members, person_steps)


def step_names(spec: CohortSpec) -> list[tuple[str, str]]:
    names = [(name, kind) for name, kind, _ in steps(spec)]
    if spec.index.select != "all":
        names.append((f"{spec.index.select} per person", "select"))
    return names


def with_series(members: DataFrame, events: DataFrame, spec: CohortSpec, as_of: dt.date) -> DataFrame:
    """A map of series name -> the member's (time, value, unit) values of that series, in time order."""
    names = []
    for name, series in spec.series.items():
        values = (_related(members, events, series.codes, series.window, series.same_encounter, as_of)
                  .groupBy(INDEX_KEY)
                  .agg(F.array_sort(F.collect_list(F.struct(F.col("e_time").alias("time"),
                                                            F.col("e_value").alias("value"),
                                                            F.col("e_unit").alias("unit")))).alias(f"s_{name}")))
        members = members.join(values, INDEX_KEY, "left")
        names.append(name)
    point = "struct<time: timestamp, value: double, unit: string>"
    entries = [F.struct(F.lit(n).alias("key"), F.coalesce(f"s_{n}", F.array().cast(f"array<{point}>")).alias("value"))
               for n in names]
    series_map = F.map_from_entries(F.array(*entries)).cast(f"map<string, array<{point}>>") if names \
        else F.create_map().cast(f"map<string, array<{point}>>")
    return members.withColumn("series", series_map)


def attrition(spark: SparkSession, spec: CohortSpec, person_steps: DataFrame, as_of: dt.date) -> DataFrame:
    """Persons and index events left after each step, summed from gold.cohort_steps (one small row)."""
    names = step_names(spec)
    counts = person_steps.agg(
        *[F.count(F.when(F.element_at("passed", i + 1) > 0, 1)).alias(f"p{i}") for i in range(len(names))],
        *[F.coalesce(F.sum(F.element_at("passed", i + 1)), F.lit(0)).alias(f"e{i}") for i in range(len(names))],
    ).first()
    rows = [(spec.name, i, name, kind, counts[f"p{i}"], counts[f"e{i}"]) for i, (name, kind) in enumerate(names)]
    schema = "cohort STRING, step INT, criterion STRING, kind STRING, persons BIGINT, index_events BIGINT"
    return (spark.createDataFrame(rows, schema)
            .withColumn("as_of", F.lit(as_of)).withColumn("built_at", F.current_timestamp())
            .select(*COHORT_ATTRITION.columns))
