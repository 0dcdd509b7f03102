"""`lakehouse export`: a cohort leaves the platform de-identified. On the shared region's diabetes cohort: every
combination of the quasi-identifiers holds at least k persons, rows are kept or counted as suppressed, keys and
dates cannot be joined back (a test salt maps them back to check the shift), the risk summary and the audit row
are written; and the choice of generalisation level on a crafted frame."""

from __future__ import annotations

import json
import time

import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from lakehouse import io
from lakehouse.catalog import AUDIT_LOG, cohort_table
from lakehouse.errors import ConfigError, UsageError
from lakehouse.research_export import LEVELS, SHIFT_SECONDS, ExportRefused, choose_level, export_cohort, generalised
from lakehouse.services import audit
from lakehouse.services.store import run as delta_query

COHORT = "diabetes_inpatients"
QI = ["age_band", "sex", "hospital", "admission_year"]
SALT = "ab" * 32
PURPOSE = f"test: k-anonymity {time.time_ns()}"  # unique, so a reused region's older rows do not count


@pytest.fixture(scope="module")
def exported(region, spark, settings, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "diabetes"
    summary = export_cohort(spark, settings, COHORT, PURPOSE, str(out), salt=SALT)
    return summary, out


def test_every_combination_holds_k_persons_and_nothing_is_lost(exported, spark, settings):
    summary, out = exported
    data = spark.read.parquet(str(out / "parquet"))
    assert summary.k == settings.main.export.k == 5
    smallest = data.groupBy(*QI).agg(F.countDistinct("subject_id").alias("n")).agg(F.min("n")).first()[0]
    assert summary.rows_out > 0 and smallest >= summary.k and summary.k_achieved == smallest
    source = io.read(spark, cohort_table(COHORT), settings.root)
    assert summary.rows_in == source.count() == summary.rows_out + summary.rows_suppressed
    assert summary.rows_suppressed <= summary.max_suppressed_share * summary.rows_in
    assert data.count() == summary.rows_out == spark.read.option("header", True).csv(str(out / "csv")).count()
    assert set(data.columns) == {"subject_id", "event_id", "index_time", *QI, "criteria_met", "flags", "series"}
    assert json.loads((out / "risk_summary.json").read_text())["k_achieved"] == smallest
    assert data.where(F.col("age_band").rlike("^(9[0-9]|1[0-9][0-9])-")).count() == 0  # 90 and over are "90+"


def test_dates_are_shifted_per_person_and_intervals_are_kept(exported, spark, settings):
    _, out = exported
    data = spark.read.parquet(str(out / "parquet"))
    source = io.read(spark, cohort_table(COHORT), settings.root)
    salted = source.crossJoin(spark.createDataFrame([(SALT,)], "salt string"))  # as the export does: no literal

    def keyed(kind, column):
        return F.substring(F.sha2(F.concat_ws(":", F.col("s.salt"), F.lit(kind), F.col(f"s.{column}")), 256), 1, 20)
    pairs = data.alias("e").join(salted.alias("s"), (F.col("e.subject_id") == keyed("person", "person_key"))
                                 & (F.col("e.event_id") == keyed("event", "encounter_key")))
    assert pairs.count() == data.count()  # the test salt maps every row back to its source
    shifts = pairs.select("e.subject_id", (F.unix_timestamp("e.index_time") - F.unix_timestamp("s.index_time"))
                          .alias("shift"), F.concat_ws("|", *[f"e.{c}" for c in QI]).alias("qi"))
    per_person = shifts.groupBy("subject_id").agg(F.min("shift").alias("lo"), F.max("shift").alias("hi"),
                                                  F.countDistinct("qi").alias("qis")).collect()
    low, high = SHIFT_SECONDS
    assert all(r.lo == r.hi and low <= r.lo < high and r.qis == 1 for r in per_person)  # one shift, one class
    assert len({r.lo for r in per_person}) == len(per_person)  # a secret offset per person
    assert len({r.lo % (7 * 86400) for r in per_person}) > 1  # weekdays and times of day do not survive

    def gaps(frame, prefix):
        return frame.select(F.explode(f"{prefix}.series").alias("code", "points"), f"{prefix}.index_time").select(
            F.explode("points").alias("p"), "index_time").select(
            (F.unix_timestamp("p.time") - F.unix_timestamp("index_time")).alias("gap"))
    # the series' times keep their distance to the index time
    assert sorted(r.gap for r in gaps(pairs, "e").collect()) == sorted(r.gap for r in gaps(pairs, "s").collect())


def test_the_salt_is_in_no_query_plan(exported, test_root):
    """Spark's event log (like its UI) keeps every query's plan: the export's salt must not be a literal in one."""
    logs = [f for f in (test_root / "spark-events").rglob("*") if f.is_file()]
    assert any("concat_ws(:, salt#" in f.read_text(errors="ignore") for f in logs)  # the export's plans are there
    assert not any(SALT in f.read_text(errors="ignore") for f in logs)


def test_the_export_is_audited_and_each_export_has_its_own_keys(exported, spark, settings, tmp_path):
    summary, out = exported
    rows = delta_query("SELECT * FROM log WHERE action = 'export'",
                       log=DeltaTable(AUDIT_LOG.path(settings.root))).to_pylist()
    mine = [r for r in rows if r["purpose"] == PURPOSE]
    assert len(mine) == 1 and mine[0]["rows"] == summary.rows_out and mine[0]["writer"].startswith("export@")
    assert f"k=5, achieved {summary.k_achieved}" in mine[0]["outcome"]
    assert dict(mine[0]["versions"]) == {f"gold.cohort_{COHORT}": summary.cohort_version}
    assert audit.verify(settings.root).ok
    again = export_cohort(spark, settings, COHORT, "test: a second export", str(tmp_path / "again"))
    assert again.rows_out == summary.rows_out
    one = {r.subject_id for r in spark.read.parquet(str(out / "parquet")).select("subject_id").collect()}
    two = {r.subject_id for r in spark.read.parquet(str(tmp_path / "again" / "parquet")).select("subject_id").collect()}
    assert one and not one & two


def test_bad_exports_are_refused_before_anything_is_written(exported, spark, settings, tmp_path):
    _, out = exported
    with pytest.raises(UsageError, match="declared purpose"):
        export_cohort(spark, settings, COHORT, "  ", str(tmp_path / "a"))
    with pytest.raises(ExportRefused, match="is not empty"):
        export_cohort(spark, settings, COHORT, "again", str(out))
    with pytest.raises(ConfigError, match="no such cohort"):
        export_cohort(spark, settings, "nope", "why", str(tmp_path / "b"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_first_level_that_is_k_anonymous_is_chosen(spark):
    persons = spark.createDataFrame(
        [("p1", 41, "F", "H01", 2023, 1), ("p2", 46, "F", "H01", 2023, 1), ("p3", 47, "F", "H01", 2023, 1),
         ("p4", 44, "F", "H01", 2023, 1), ("p5", 72, "M", "H02", 2021, 1)],
        "person_key string, age int, sex string, hospital_id string, year int, rows long")
    # 5-year bands: 40-44 and 45-49 each hold 2 persons, p5 is alone: 1 of 5 rows within a 20% budget at k=2
    number, _, small = choose_level(persons, k=2, max_share=0.2)
    assert (number, small) == (0, 1)
    # with no budget, p5 has to be generalised away with everything else: only the level without any detail
    number, _, small = choose_level(persons, k=2, max_share=0.0)
    assert small == 0 and number == len(LEVELS) - 1
    # k=3: 5-year bands split the four 40-somethings 2 + 2; 10-year bands hold all four
    number, _, small = choose_level(persons, k=3, max_share=0.2)
    assert (number, small) == (1, 1)
    # fewer than k persons in all: no level is safe
    assert choose_level(persons, k=6, max_share=0.2) is None
    # bands stop below 90: everyone 90 and over is "90+"; a missing value is a value of its own
    ages = spark.createDataFrame([("p", 85, "F", "H01", 2023, 1), ("q", 93, "F", "H01", 2023, 1),
                                  ("r", None, None, None, None, 1)], persons.schema)
    assert [(r.age_band, r.sex_g, r.hospital, r.admission_year) for r in
            generalised(ages, LEVELS[3]).orderBy("person_key").collect()] == [
        ("80-89", "F", "H01", "2020-2024"), ("90+", "F", "H01", "2020-2024"),
        ("unknown", "unknown", "unknown", "unknown")]
