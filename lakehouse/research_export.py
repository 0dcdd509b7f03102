"""`lakehouse export --cohort NAME --purpose TEXT --out DIR`: a de-identified research extract of a cohort.

What leaves the platform, per index event of `gold.cohort_<name>`:
- `subject_id`, a key unique to this export (sha256 of a random per-export salt and the person key; the salt is
  never stored, so two exports cannot be joined on it) and `event_id` likewise for the encounter key;
- every date shifted per person by a secret random whole number of weeks (100-200 years forward, the same for all
  of a person's dates: intervals, weekdays and times of day are kept, calendar years are not);
- the quasi-identifiers (age band, sex, hospital, admission year), generalised together, one level at a time
  (`LEVELS`, global recoding) until every combination that occurs holds at least k persons once the rows of the
  smaller combinations are suppressed, and those are at most `max_suppressed_share` of the rows; the first level
  that achieves this is used (the most detail that is still safe). Ages of 90 and over are always `90+`;
- criteria met, flags and the measurement series (their times shifted).

Written as Parquet and CSV folders (the series as JSON text in the CSV), with `risk_summary.json` beside them:
k asked and achieved, the level and what it generalised, rows and persons in and out, rows suppressed. The same
summary is the export's row in ops.audit_log, with the declared purpose, the user, and the cohort's Delta
version. Counting per combination is a Spark aggregate: only the (small) table of combinations reaches the driver.
"""

from __future__ import annotations

import getpass
import json
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import io
from lakehouse.catalog import AUDIT_LOG, cohort_table
from lakehouse.config import Settings
from lakehouse.errors import LakehouseError, UsageError
from lakehouse.services.audit import AuditLog

QUASI_IDENTIFIERS = ("age_band", "sex", "hospital", "admission_year")
SHIFT_WEEKS = (5218, 10436)  # 100 to 200 years


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
    date_shift: str = "per person, a secret whole number of weeks between 100 and 200 years forward"
    keys: str = "subject_id and event_id are keyed by a random salt of this export, not stored"


class ExportRefused(LakehouseError):
    exit_code = 2


def _band(column: Column, width: int, top: int | None = None) -> Column:
    start = F.floor(column / width) * width
    end = start + width - 1 if top is None else F.least(start + width - 1, F.lit(top - 1))
    band = F.concat(start.cast("string"), F.lit("-"), end.cast("string"))
    return band if top is None else F.when(column >= top, F.lit(f"{top}+")).otherwise(band)


def generalised(rows: DataFrame, level: Level) -> DataFrame:
    """The quasi-identifier columns at `level` (from `age`, `sex`, `hospital_id`, `year`)."""
    return rows.select(
        "*",
        (_band(F.col("age"), level.age_years, 90) if level.age_years else F.lit("*")).alias("age_band"),
        (F.coalesce(F.col("sex"), F.lit("unknown")) if level.sex else F.lit("*")).alias("sex_g"),
        (F.col("hospital_id") if level.hospital else F.lit("*")).alias("hospital"),
        (_band(F.col("year"), level.year_span) if level.year_span > 1 else F.col("year").cast("string")
         if level.year_span else F.lit("*")).alias("admission_year"),
    )


def choose_level(rows: DataFrame, k: int, max_share: float) -> tuple[int, DataFrame, int]:
    """The first level whose combinations of fewer than k persons hold at most max_share of the rows; the
    combinations' person and row counts at that level, and the rows to suppress."""
    total = rows.count()
    for number, level in enumerate(LEVELS):
        classes = (generalised(rows, level).groupBy("age_band", "sex_g", "hospital", "admission_year")
                   .agg(F.countDistinct("person_key").alias("persons"), F.count(F.lit(1)).alias("rows")))
        small = classes.where(F.col("persons") < k).agg(F.coalesce(F.sum("rows"), F.lit(0))).first()[0]
        if small <= max_share * total or number == len(LEVELS) - 1:
            return number, classes, int(small)
    raise AssertionError("unreachable")


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
    salt = salt or secrets.token_hex(32)
    source = io.read(spark, ref, settings.root, version)

    def keyed(column: str, purpose_tag: str) -> Column:
        return F.substring(F.sha2(F.concat(F.lit(f"{salt}:{purpose_tag}:"), F.col(column)), 256), 1, 20)

    low, high = SHIFT_WEEKS
    weeks = F.conv(F.substring(F.sha2(F.concat(F.lit(f"{salt}:shift:"), F.col("person_key")), 256), 1, 12), 16, 10)
    rows = source.select(
        "*",
        F.col("age_at_index").alias("age"),
        F.year("index_time").alias("year"),
        (F.lit(low) + weeks.cast("long") % (high - low)).cast("int").alias("shift_weeks"),
    )
    number, classes, small = choose_level(rows, spec.k, spec.max_suppressed_share)
    level = LEVELS[number]
    safe = classes.where(F.col("persons") >= spec.k).select("age_band", "sex_g", "hospital", "admission_year")
    kept = generalised(rows, level).join(F.broadcast(safe), ["age_band", "sex_g", "hospital", "admission_year"])

    def shifted(column: Column) -> Column:
        return F.timestamp_add("WEEK", F.col("shift_weeks"), column)

    extract = kept.select(
        keyed("person_key", "person").alias("subject_id"),
        keyed("encounter_key", "event").alias("event_id"),
        shifted(F.col("index_time")).alias("index_time"),
        "age_band", F.col("sex_g").alias("sex"), "hospital", "admission_year", "criteria_met", "flags",
        F.transform_values("series", lambda _, points: F.transform(
            points, lambda p: p.withField("time", shifted(p["time"])))).alias("series"),
    )
    target.mkdir(parents=True, exist_ok=True)
    extract.write.mode("errorifexists").parquet(str(target / "parquet"))
    written = spark.read.parquet(str(target / "parquet"))
    (written.withColumn("criteria_met", F.to_json("criteria_met")).withColumn("flags", F.to_json("flags"))
     .withColumn("series", F.to_json("series")).write.option("header", True).csv(str(target / "csv")))
    counts = written.agg(F.count(F.lit(1)), F.countDistinct("subject_id")).first()
    out_classes = (written.groupBy("age_band", "sex", "hospital", "admission_year")
                   .agg(F.countDistinct("subject_id").alias("persons"))
                   .agg(F.min("persons"), F.count(F.lit(1))).first())
    totals = rows.agg(F.count(F.lit(1)), F.countDistinct("person_key")).first()
    summary = RiskSummary(cohort, version, purpose, spec.k, out_classes[0], number, level.describe(),
                          totals[0], totals[1], counts[0], counts[1], small, out_classes[1],
                          spec.max_suppressed_share)
    (target / "risk_summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8")
    _audit(settings, summary, ref.qualified, str(target), time.monotonic() - started)
    return summary


def _audit(settings: Settings, summary: RiskSummary, table: str, out: str, seconds: float) -> None:
    """The export's row of ops.audit_log (its own writer: a chain of one entry per export)."""
    log = AuditLog(settings.root, flush_seconds=60, writer_kind="export")
    log.record(actor=getpass.getuser(), role="admin", action="export", target=f"{table} -> {out}",
               tables=[table], versions={table: summary.cohort_version}, rows=summary.rows_out,
               purpose=summary.purpose, status=0, duration_ms=seconds * 1000,
               outcome=f"ok: k={summary.k}, achieved {summary.k_achieved}, level {summary.level} "
                       f"({summary.generalisation}), {summary.rows_suppressed} of {summary.rows_in} rows suppressed")
    log.flush()
    if log.pending:
        raise LakehouseError(f"the export in {out} is written but its row could not be appended to "
                             f"{AUDIT_LOG.qualified}: {json.dumps(log.pending, default=str)[:500]}")

