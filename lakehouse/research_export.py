"""`lakehouse export --cohort NAME --purpose TEXT --out DIR`: a de-identified research extract of a cohort.

What leaves the platform, per index event of `gold.cohort_<name>`:
- `subject_id`, a key unique to this export (sha256 of a random per-export salt and the person key; the salt is
  never stored and enters the query as data, not as a literal in its plan, so two exports cannot be joined on
  it) and `event_id` likewise for the encounter key;
- every date shifted per person by a secret random number of seconds, 100 to 200 years forward, the same for all
  of a person's dates: intervals between a person's events are kept; calendar dates, weekdays and times of day
  are not;
- the quasi-identifiers (age band, sex, hospital, admission year) of the person, taken from their first index
  event, so each person is in one combination and k counts persons; generalised together one level at a time
  (`LEVELS`, global recoding) until every combination left holds at least k persons once the persons of the
  smaller ones are suppressed, and their rows are at most `max_suppressed_share` of the rows; the first level
  that achieves this is used (the most detail that is still safe). Ages of 90 and over are always `90+`. A
  cohort that no level makes safe (fewer than k persons) is refused;
- criteria met, flags and the measurement series (their times shifted).

Written aside and published as Parquet and CSV folders (the series as JSON text in the CSV), with
`risk_summary.json` beside them, only after the export's row is in ops.audit_log (user, declared purpose, the
cohort's Delta version, the risk summary): nothing leaves unaudited. Counting per combination is a Spark
aggregate: only the (small) table of combinations reaches the driver.

Residual risk, said plainly: someone who holds the source records can still match a person by the exact
intervals between their events (what date shifting keeps by design); the clinical values are not checked for
diversity within a combination (l-diversity).
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lakehouse import access, io
from lakehouse.catalog import AUDIT_LOG, cohort_table
from lakehouse.config import Settings
from lakehouse.errors import LakehouseError, UsageError
from lakehouse.services.audit import AuditLog

QUASI_IDENTIFIERS = ("age_band", "sex", "hospital", "admission_year")
SHIFT_SECONDS = (100 * 365 * 86400, 200 * 365 * 86400)  # a person's dates move 100 to 200 years forward


@dataclass(frozen=True)
class Level:
    """One step of generalisation: the width of age bands and admission-year ranges (0: suppressed to `*`), and
    whether hospital and sex are kept."""

    age_years: int
    year_span: int
    hospital: bool
    sex: bool = True

    def describe(self) -> str:
        return (f"age in {self.age_years}-year bands" if self.age_years else "age removed") + ", " + \
               (f"admission year in {self.year_span}-year ranges" if self.year_span else "admission year removed") + \
               ", " + ("hospital kept" if self.hospital else "hospital removed") + ", " + \
               ("sex kept" if self.sex else "sex removed")


LEVELS = (Level(5, 1, True), Level(10, 1, True), Level(10, 5, True), Level(20, 5, True), Level(20, 5, False),
          Level(20, 0, False), Level(0, 0, False), Level(0, 0, False, False))


@dataclass(frozen=True)
class RiskSummary:
    cohort: str
    cohort_version: int
    purpose: str
    k: int
    k_achieved: int | None
    level: int
    generalisation: str
    rows_in: int
    persons_in: int
    rows_out: int
    persons_out: int
    rows_suppressed: int
    classes: int
    max_suppressed_share: float
    date_shift: str = "per person, a secret number of seconds between 100 and 200 years forward"
    keys: str = "subject_id and event_id are keyed by a random salt of this export, not stored"


class ExportRefused(LakehouseError):
    exit_code = 2


def _band(column: Column, width: int, top: int | None = None) -> Column:
    start = F.floor(column / width) * width
    end = start + width - 1 if top is None else F.least(start + width - 1, F.lit(top - 1))
    band = F.concat(start.cast("string"), F.lit("-"), end.cast("string"))
    return band if top is None else F.when(column >= top, F.lit(f"{top}+")).otherwise(band)


def generalised(persons: DataFrame, level: Level) -> DataFrame:
    """The quasi-identifier columns at `level` (from `age`, `sex`, `hospital_id`, `year`; a missing value is a
    value of its own, `unknown`)."""
    unknown = F.lit("unknown")
    return persons.select(
        "*",
        (F.coalesce(_band(F.col("age"), level.age_years, 90), unknown) if level.age_years else F.lit("*"))
        .alias("age_band"),
        (F.coalesce(F.col("sex"), unknown) if level.sex else F.lit("*")).alias("sex_g"),
        (F.coalesce(F.col("hospital_id"), unknown) if level.hospital else F.lit("*")).alias("hospital"),
        (F.coalesce(_band(F.col("year"), level.year_span) if level.year_span > 1 else F.col("year").cast("string"),
                    unknown) if level.year_span else F.lit("*")).alias("admission_year"),
    )


CLASS = ["age_band", "sex_g", "hospital", "admission_year"]


def choose_level(persons: DataFrame, k: int, max_share: float) -> tuple[int, DataFrame, int] | None:
    """`persons`: one row per person with `age`, `sex`, `hospital_id`, `year` and `rows` (the person's rows).
    The first level whose combinations of fewer than k persons carry at most max_share of the rows, with the
    combinations' person and row counts at that level and the rows to suppress; None when no level does."""
    total = persons.agg(F.sum("rows")).first()[0] or 0
    for number, level in enumerate(LEVELS):
        classes = (generalised(persons, level).groupBy(*CLASS)
                   .agg(F.count(F.lit(1)).alias("persons"), F.sum("rows").alias("rows")))
        small = classes.where(F.col("persons") < k).agg(F.coalesce(F.sum("rows"), F.lit(0))).first()[0]
        if small <= max_share * total:
            return number, classes, int(small)
    return None


def export_cohort(spark: SparkSession, settings: Settings, cohort: str, purpose: str, out: str,
                  salt: str | None = None) -> RiskSummary:
    """`salt` is for tests only (to map the export back to its source); an export draws its own."""
    if not purpose.strip():
        raise UsageError("an export needs a declared purpose (--purpose), recorded in ops.audit_log")
    settings.cohort(cohort)  # a known cohort, else a config error naming it
    ref = cohort_table(cohort)
    if not io.exists(spark, ref, settings.root):
        raise ExportRefused(f"{ref.qualified} has not been built: run `lakehouse build` first")
    target = Path(out)
    if target.exists() and any(target.iterdir()):
        raise ExportRefused(f"{target} is not empty: an export is written into a new folder")
    spec = settings.main.export
    started = time.monotonic()
    version = io.latest_version(spark, ref, settings.root)
    who = access.current(settings)
    source = access.Reader(spark, settings, who, purpose, writer_kind="export").table(ref.qualified, version=version)
    # the salt joins as data, so it is never a literal in a query plan (the UI, event logs)
    salted = source.crossJoin(F.broadcast(spark.createDataFrame([(salt or secrets.token_hex(32),)], "salt string")))

    def keyed(column: str, kind: str) -> Column:
        return F.substring(F.sha2(F.concat_ws(":", F.col("salt"), F.lit(kind), F.col(column)), 256), 1, 20)

    # the quasi-identifiers are a person's, from their first index event: one class per person, so k counts
    # persons and a person's several events cannot narrow down their shift through several exact years
    first = Window.partitionBy("person_key").orderBy("index_time", "encounter_key")
    low, high = SHIFT_SECONDS
    draw = F.conv(F.substring(F.sha2(F.concat_ws(":", F.col("salt"), F.lit("shift"), F.col("person_key")), 256),
                              1, 15), 16, 10).cast("long")
    persons = (salted.select("person_key", "salt", F.col("age_at_index").alias("age"), "sex", "hospital_id",
                             F.year("index_time").alias("year"), F.row_number().over(first).alias("n"),
                             F.count(F.lit(1)).over(Window.partitionBy("person_key")).alias("rows"))
               .where("n = 1").drop("n")
               .withColumn("shift_seconds", F.lit(low) + draw % F.lit(high - low))
               .cache())  # one row per person, counted at each level tried: computed once
    totals = persons.agg(F.count(F.lit(1)), F.sum("rows")).first()
    if not totals[0]:
        persons.unpersist()
        raise ExportRefused(f"{ref.qualified} has no members: there is nothing to export")
    chosen = choose_level(persons, spec.k, spec.max_suppressed_share)
    if chosen is None:
        persons.unpersist()
        raise ExportRefused(f"{ref.qualified} holds {totals[0]} persons: fewer than k={spec.k} in any combination, "
                            "even with every quasi-identifier removed; nothing can leave without identifying them")
    number, classes, small = chosen
    level = LEVELS[number]
    safe = classes.where(F.col("persons") >= spec.k).select(*CLASS)
    kept = generalised(persons, level).join(F.broadcast(safe), CLASS).select(
        "person_key", "salt", "shift_seconds", "age_band", F.col("sex_g").alias("sex"), "hospital", "admission_year")

    def shifted(column: Column) -> Column:
        return F.timestamp_add("SECOND", F.col("shift_seconds"), column)

    events = source.select("person_key", "encounter_key", "index_time", "criteria_met", "flags", "series")
    extract = events.join(kept, "person_key").select(
        keyed("person_key", "person").alias("subject_id"),
        keyed("encounter_key", "event").alias("event_id"),
        shifted(F.col("index_time")).alias("index_time"),
        "age_band", "sex", "hospital", "admission_year", "criteria_met", "flags",
        F.transform_values("series", lambda _, points: F.transform(
            points, lambda p: p.withField("time", shifted(p["time"])))).alias("series"),
    )
    # written aside, published into the folder only once its audit row is in ops.audit_log
    staging = target / f".staging-{secrets.token_hex(4)}"
    target.mkdir(parents=True, exist_ok=True)
    try:
        extract.write.parquet(str(staging / "parquet"))
        written = spark.read.parquet(str(staging / "parquet"))
        (written.withColumn("criteria_met", F.to_json("criteria_met")).withColumn("flags", F.to_json("flags"))
         .withColumn("series", F.to_json("series")).write.option("header", True).csv(str(staging / "csv")))
        counts = written.agg(F.count(F.lit(1)), F.countDistinct("subject_id")).first()
        out_classes = (written.groupBy("age_band", "sex", "hospital", "admission_year")
                       .agg(F.countDistinct("subject_id").alias("persons"))
                       .agg(F.min("persons"), F.count(F.lit(1))).first())
        summary = RiskSummary(cohort, version, purpose, spec.k, out_classes[0], number, level.describe(),
                              totals[1], totals[0], counts[0], counts[1], small, out_classes[1],
                              spec.max_suppressed_share)
        (staging / "risk_summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8")
        _audit(settings, who, summary, ref.qualified, str(target), time.monotonic() - started)
        for part in ("parquet", "csv", "risk_summary.json"):
            (staging / part).replace(target / part)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        persons.unpersist()
    return summary


def _audit(settings: Settings, who: access.Principal, summary: RiskSummary, table: str, out: str,
           seconds: float) -> None:
    """The export's row of ops.audit_log (its own writer: a chain of one entry per export)."""
    log = AuditLog(settings.root, flush_seconds=60, writer_kind="export")
    appended = log.write(actor=who.name, role=who.role, hospital_id=who.hospital_id, action="export",
                         target=f"{table} -> {out}",
                         tables=[table], versions={table: summary.cohort_version}, rows=summary.rows_out,
                         purpose=summary.purpose, status=0, duration_ms=seconds * 1000,
                         outcome=f"ok: k={summary.k}, achieved {summary.k_achieved}, level {summary.level} "
                                 f"({summary.generalisation}), {summary.rows_suppressed} of {summary.rows_in} rows "
                                 "suppressed")
    if not appended:
        raise LakehouseError(f"the export to {out} was not published: its row could not be appended to "
                             f"{AUDIT_LOG.qualified} (see the log above); nothing leaves unaudited")

