"""Data-quality rules as data (conf/dq/<table>.yaml), evaluated on the executors as Spark SQL.

Row rules run on a silver table's new rows before they are merged: each failed rule's name goes into
`_dq_failed`; `warn` rules keep the row and list their names in `dq_flags`, `quarantine` rules send it
to `ops.quarantine` (layer silver, the rule as reason) instead of silver, `fail` rules stop the run.
Table checks (completeness, uniqueness, referential integrity, and an event's time within its patient's life:
not before the birth year, not after a death) run on the merged table. Every rule
and check gives one `ops.dq_result` row per hospital: checked rows, failed rows, pass rate, threshold,
status. Only those per-hospital counts reach the driver.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import io
from lakehouse.catalog import DQ_RESULT, QUARANTINE, SILVER
from lakehouse.config import DqCheck, DqRule, DqTable, Settings
from lakehouse.errors import ConfigError, LakehouseError

FAILED = "_dq_failed"
# columns a rule may use besides the table's own, computed by refine before the rules run (not stored)
EVENT_HELPERS = {"encounter_found": "BOOLEAN"}  # the row's encounter is in silver.encounter
HELPERS = {"person": {"has_mrn": "BOOLEAN"}, "encounter": {}}  # the hospital sent the record's MRN
QUARANTINE_KEYS = ("layer", "stage", "source_file", "source_line", "reason")
LIFESPAN_KINDS = ("after_birth", "before_death")
DEATH = "death"  # silver.encounter.discharge_disposition of a stay that ended in death


class DataQualityFailure(LakehouseError):
    """A rule whose action is `fail` failed: the run stops before the table is written."""

    exit_code = 5

    @property
    def advice(self) -> str:
        return ("see the failing rows' hospitals in ops.dq_result (`lakehouse dq-report --out DIR`); fix the source "
                "or change the rule's action in conf/dq (docs/data-quality.md lists them), then refine again")


@dataclass(frozen=True)
class Evaluated:
    """A table's new rows with the names of the rules each fails, and the per-hospital results."""

    rows: DataFrame
    results: list[tuple]


def validate(spark: SparkSession, settings: Settings) -> None:
    """Analyse every rule against its table's columns (an empty frame: no data is read)."""
    for table, conf in settings.dq.items():
        file = str(settings.conf_dir / "dq" / f"{table}.yaml")
        helpers = HELPERS.get(table, EVENT_HELPERS)
        ddl = SILVER[table].schema_ddl + "".join(f", {name} {kind}" for name, kind in helpers.items())
        empty = spark.createDataFrame([], ddl)
        for i, rule in enumerate(conf.rules):
            try:
                empty.select(F.expr(rule.expression).cast("boolean"))
            except Exception as err:  # an unknown column (analysis) or bad syntax (parse)
                raise ConfigError(file, f"rules.{i}.expression", _first_line(err)) from None
        for i, check in enumerate(conf.checks):
            for column in check.columns:
                if column not in SILVER[table].columns:
                    raise ConfigError(file, f"checks.{i}.columns", f"{column!r} is not a column of silver.{table}")
            if check.references:
                _, other, column = check.references.split(".")
                if other not in SILVER or column not in SILVER[other].columns:
                    raise ConfigError(file, f"checks.{i}.references", f"{check.references} is not a silver column")
            if check.kind in LIFESPAN_KINDS:
                (column,) = check.columns
                if "patient_key" not in SILVER[table].columns or dict(SILVER[table].fields).get(column) != "TIMESTAMP":
                    raise ConfigError(file, f"checks.{i}.columns",
                                      f"kind {check.kind} takes a TIMESTAMP column of a table with patient_key")


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0][:300]


def _fails(rule: DqRule) -> Column:
    """True when the row breaks the rule (a null outcome is not a failure: other rules judge missing values)."""
    return ~F.coalesce(F.expr(rule.expression).cast("boolean"), F.lit(True))


def evaluate(rows: DataFrame, conf: DqTable | None) -> DataFrame:
    """`rows` with `_dq_failed`: the names of the rules each row fails."""
    rules = conf.rules if conf else []
    if not rules:
        return rows.withColumn(FAILED, F.array().cast("array<string>"))
    names = F.array(*[F.when(_fails(r), F.lit(r.name)) for r in rules])
    return rows.withColumn(FAILED, F.filter(names, lambda n: n.isNotNull()))


def _named(rules: list[DqRule], action: str) -> list[str]:
    return [r.name for r in rules if r.action == action]


def flags(conf: DqTable | None) -> Column:
    """The warn rules a row fails: silver's `dq_flags`."""
    warn = _named(conf.rules if conf else [], "warn")
    return F.filter(F.col(FAILED), lambda n: n.isin(*warn)) if warn else F.array().cast("array<string>")


def quarantined(conf: DqTable | None) -> Column:
    """Whether a row fails a quarantine rule."""
    names = _named(conf.rules if conf else [], "quarantine")
    return F.exists(F.col(FAILED), lambda n: n.isin(*names)) if names else F.lit(False)


def row_results(evaluated: DataFrame, conf: DqTable | None, table: str, run_id: str) -> list[tuple]:
    """One result per rule and hospital: a single aggregation over the evaluated rows."""
    rules = conf.rules if conf else []
    if not rules:
        return []
    counts = (evaluated.groupBy("hospital_id")
              .agg(F.count("*").alias("_checked"),
                   *[F.count(F.when(F.array_contains(FAILED, r.name), 1)).alias(r.name) for r in rules])
              .collect())  # one row per hospital
    return [_result(run_id, table, rule.name, "row", rule.category, rule.severity, rule.action, row.hospital_id,
                    row._checked, row[rule.name], rule.threshold)
            for row in counts for rule in rules]


def check_results(spark: SparkSession, settings: Settings, conf: DqTable | None, table: str,
                  run_id: str, lives: DataFrame | None = None) -> list[tuple]:
    """Table checks on the merged silver table, per hospital: one aggregation (one Spark job) for all of a
    table's checks, a referential check's lookup joined in first (`lives`: the `lifespan` frame, if the caller
    holds it)."""
    checks = conf.checks if conf else []
    if not checks:
        return []
    frame = io.read(spark, SILVER[table], settings.root)
    counts = check_counts(frame, checks, lambda other: io.read_or_empty(spark, SILVER[other], settings.root), lives)
    return [_result(run_id, table, check.name, check.kind, check.category, check.severity, "check",
                    row.hospital_id, row._checked, row[f"_failed{i}"], check.threshold)
            for row in counts.collect() for i, check in enumerate(checks)]  # one row per hospital


def check_counts(frame: DataFrame, checks: list[DqCheck], table: Callable[[str], DataFrame],
                 lives: DataFrame | None = None) -> DataFrame:
    """Per hospital: `_checked` rows and `_failed<i>` rows failing check i. `table(name)` is silver.<name>, where
    a referential check looks its values up and the lifespan checks find births and deaths (unless `lives` holds
    them already)."""
    for i, check in enumerate(checks):
        if check.kind == "referential":
            _, other, column = check.references.split(".")
            (local,) = check.columns
            known = table(other).select(F.col(column).alias(f"_ref{i}"), F.lit(True).alias(f"_found{i}")).distinct()
            frame = frame.join(known, F.col(local) == F.col(f"_ref{i}"), "left")
    if any(check.kind in LIFESPAN_KINDS for check in checks):
        frame = frame.join(lifespan(table) if lives is None else lives, F.col("patient_key") == F.col("_life_key"),
                           "left")
    return frame.groupBy("hospital_id").agg(F.count("*").alias("_checked"),
                                            *[_failed(check, i).alias(f"_failed{i}") for i, check in enumerate(checks)])


def lifespan(table: Callable[[str], DataFrame]) -> DataFrame:
    """Per hospital patient record (`_life_key`): its `_birth_year` (silver.person) and `_death_time`, the end of
    its first stay that ended in death (silver.encounter)."""
    births = table("person").select(F.col("patient_key").alias("_life_key"), F.col("birth_year").alias("_birth_year"))
    deaths = (table("encounter").where(F.col("discharge_disposition") == DEATH)
              .groupBy(F.col("patient_key").alias("_life_key")).agg(F.min("discharge_time").alias("_death_time")))
    return births.join(deaths, "_life_key", "full")


def _failed(check: DqCheck, i: int) -> Column:
    """Per hospital, the rows that fail the check: a missing value, a row beyond the first of its values (the
    table's rows less their distinct value combinations, nulls alike), a value the other table lacks, a time in a
    year before the patient's birth year or after their death (an unknown time, birth or death fails nothing)."""
    if check.kind == "completeness":
        return F.count(F.when(reduce(lambda a, b: a | b, [F.col(c).isNull() for c in check.columns]), 1))
    if check.kind == "uniqueness":
        return F.count("*") - F.count_distinct(F.struct(*check.columns))
    if check.kind == "after_birth":
        return F.count(F.when(F.year(check.columns[0]) < F.col("_birth_year"), 1))
    if check.kind == "before_death":
        return F.count(F.when(F.col(check.columns[0]) > F.col("_death_time"), 1))
    return F.count(F.when(F.col(f"_found{i}").isNull(), 1))


def _result(run_id: str, table: str, rule: str, kind: str, category: str, severity: str, action: str,
            hospital_id: str, checked: int, failed: int, threshold: float) -> tuple:
    checked, failed = int(checked or 0), int(failed or 0)
    rate = 1.0 if checked == 0 else (checked - failed) / checked
    return (run_id, table, rule, kind, category, severity, action, hospital_id, checked, failed, rate, threshold,
            "pass" if rate >= threshold else "fail")


def write_results(spark: SparkSession, settings: Settings, results: list[tuple]) -> io.Written | None:
    """Append a run's results, all stamped with one `evaluated_at` (the write's time)."""
    if not results:
        return None
    at = dt.datetime.now(dt.UTC)
    rows = [(*result, at) for result in results]
    return io.append(spark, spark.createDataFrame(rows, DQ_RESULT.schema), DQ_RESULT, settings.root)


def stop_on_fail(results: list[tuple], conf: DqTable | None) -> None:
    failing = [r for r in results if r[6] == "fail" and r[9] > 0]
    if failing:
        names = ", ".join(sorted({f"{r[2]} ({r[7]}: {r[9]} rows)" for r in failing}))
        raise DataQualityFailure(f"silver.{failing[0][1]}: rows break a rule whose action is fail: {names}; "
                                 "nothing of this table was written, see ops.dq_result")


def quarantine_rows(evaluated: DataFrame, conf: DqTable | None, entity: str, batch_id: str) -> DataFrame:
    """Rows a quarantine rule removes from silver, in ops.quarantine's one schema (the rule is the reason)."""
    names = _named(conf.rules if conf else [], "quarantine")
    reason = F.concat(F.lit("rule "), F.array_join(F.filter(F.col(FAILED), lambda n: n.isin(*names)), ", "))
    payload = [c for c in evaluated.columns if not c.startswith("_")]
    return evaluated.where(quarantined(conf)).select(
        F.lit("silver").alias("layer"), F.lit("refine").alias("stage"), "hospital_id", F.lit(entity).alias("entity"),
        "source_file", "source_line", F.to_json(F.struct(*payload)).alias("raw"), reason.alias("reason"),
        F.lit(batch_id).alias("batch_id"), F.current_timestamp().alias("quarantined_at"))


def write_quarantine(spark: SparkSession, settings: Settings, rows: DataFrame) -> io.Written:
    """Idempotent: a row already quarantined for the same rule at the same file and line is not added again."""
    return io.merge(spark, rows, QUARANTINE, settings.root, keys=QUARANTINE_KEYS, update_when="FALSE")
