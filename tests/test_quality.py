"""Data-quality rules on one rich inline DataFrame: who is flagged, quarantined or stops the run, and the
per-hospital results."""

from __future__ import annotations

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from lakehouse.config import DqCheck, DqRule, DqTable
from lakehouse.errors import ConfigError
from lakehouse.silver import quality

RULES = DqTable(table="lab_result", rules=[
    DqRule(name="has_id", description="d", expression="source_id IS NOT NULL", category="completeness",
           action="quarantine"),
    DqRule(name="plausible", description="d", expression="value >= 0", category="plausibility.atemporal",
           action="warn", threshold=0.9),
    DqRule(name="mapped", description="d", expression="is_mapped", category="conformance", action="warn"),
], checks=[DqCheck(name="unique", description="d", kind="uniqueness", columns=["lab_key"],
                   category="plausibility.uniqueness")])


def _rows(spark):
    return spark.createDataFrame([
        ("H01", "a", -1.0, True), ("H01", None, 5.0, False), ("H01", "c", None, True),  # null value: not judged
        ("H02", "d", 2.0, True),
    ], "hospital_id STRING, source_id STRING, value DOUBLE, is_mapped BOOLEAN")


def test_rules_flag_quarantine_and_count_per_hospital(spark):
    evaluated = quality.evaluate(_rows(spark), RULES)
    got = evaluated.select("hospital_id", "source_id", quality.flags(RULES).alias("flags"),
                           quality.quarantined(RULES).alias("quarantined"))
    expected = spark.createDataFrame([
        ("H01", "a", ["plausible"], False), ("H01", None, ["mapped"], True), ("H01", "c", [], False),
        ("H02", "d", [], False),
    ], "hospital_id STRING, source_id STRING, flags ARRAY<STRING>, quarantined BOOLEAN")
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)
    results = {(r[2], r[7]): r[8:13] for r in quality.row_results(evaluated, RULES, "lab_result", "run-1")}
    assert results[("plausible", "H01")] == (3, 1, pytest.approx(2 / 3), 0.9, "fail")
    assert results[("has_id", "H01")] == (3, 1, pytest.approx(2 / 3), 0.99, "fail")
    assert results[("mapped", "H02")] == (1, 0, 1.0, 0.99, "pass")
    assert len(results) == 6  # three rules x two hospitals


def test_a_fail_rule_stops_the_run_and_a_bad_expression_is_a_config_error(spark, settings):
    failing = RULES.model_copy(update={"rules": [RULES.rules[0].model_copy(update={"action": "fail"})]})
    evaluated = quality.evaluate(_rows(spark), failing)
    results = quality.row_results(evaluated, failing, "lab_result", "run-1")
    with pytest.raises(quality.DataQualityFailure, match=r"has_id \(H01: 1 rows\)"):
        quality.stop_on_fail(results, failing)
    quality.stop_on_fail(quality.row_results(evaluated.where(F.col("source_id").isNotNull()), failing, "lab_result",
                                             "run-1"), failing)  # nothing breaks it: the run goes on
    bad = RULES.model_copy(update={"rules": [RULES.rules[1].model_copy(update={"expression": "valu >= 0"})]})
    with pytest.raises(ConfigError) as caught:
        quality.validate(spark, settings.model_copy(update={"dq": {"lab_result": bad}}))
    assert caught.value.file.endswith("dq/lab_result.yaml")
    assert caught.value.key == "rules.0.expression"
    assert "valu" in caught.value.message


def test_table_checks_count_per_hospital_in_one_aggregation(spark):
    checks = [DqCheck(name="unique", description="d", kind="uniqueness", columns=["lab_key", "encounter_key"],
                      category="plausibility.uniqueness"),
              DqCheck(name="complete", description="d", kind="completeness", columns=["value"],
                      category="completeness"),
              DqCheck(name="known", description="d", kind="referential", columns=["encounter_key"],
                      references="silver.encounter.encounter_key", category="conformance")]
    labs = spark.createDataFrame([
        ("H01", "k1", "e1", 1.0), ("H01", "k1", "e1", 2.0),  # a repeated key
        ("H01", "k2", None, None), ("H01", "k2", None, 3.0),  # repeated with a null: nulls are alike
        ("H01", "k3", "e9", 4.0),  # an encounter silver lacks
        ("H02", "k1", "e1", 5.0),  # another hospital's k1 is no repeat
    ], "hospital_id STRING, lab_key STRING, encounter_key STRING, value DOUBLE")
    encounters = spark.createDataFrame([("e1",), ("e1",), ("e2",)], "encounter_key STRING")
    got = quality.check_counts(labs, checks, {"encounter": encounters}.__getitem__)
    expected = spark.createDataFrame([("H01", 5, 2, 1, 3), ("H02", 1, 0, 0, 0)],
                                     "hospital_id STRING, _checked LONG, _failed0 LONG, _failed1 LONG, _failed2 LONG")
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def test_an_event_before_its_patients_birth_year_or_after_their_death_fails_the_lifespan_checks(spark, settings):
    checks = [DqCheck(name="born", description="d", kind="after_birth", columns=["measured_at"],
                      category="plausibility.temporal"),
              DqCheck(name="alive", description="d", kind="before_death", columns=["measured_at"],
                      category="plausibility.temporal")]
    persons = spark.createDataFrame([("p1", 1950), ("p2", 2020), ("p3", None)], "patient_key STRING, birth_year INT")
    encounters = spark.createDataFrame([
        ("p1", "death", "2024-03-01 10:00:00"), ("p1", "death", "2024-05-01 00:00:00"),  # the first death counts
        ("p2", "home", "2024-01-01 00:00:00"),  # a discharge home is no death
        ("p4", "death", "2023-01-01 00:00:00"),  # a death of a record silver.person lacks (yet)
    ], "patient_key STRING, discharge_disposition STRING, discharge_time STRING").withColumn(
        "discharge_time", F.to_timestamp("discharge_time"))
    vitals = spark.createDataFrame([
        ("H01", "p1", "2024-03-01 10:00:00"),  # at the death itself: not after it
        ("H01", "p1", "2024-03-01 10:00:01"),  # after it: fails before_death
        ("H01", "p2", "2019-12-31 23:59:59"),  # the year before the birth year: fails after_birth
        ("H01", "p2", "2020-01-01 00:00:00"),  # in the birth year: silver knows the year only
        ("H02", "p3", "1800-01-01 00:00:00"),  # no birth year: nothing to judge
        ("H02", "p4", "2023-06-01 00:00:00"),  # after a death, with no person row
        ("H02", "p9", None),  # an unknown patient and no time
    ], "hospital_id STRING, patient_key STRING, measured_at STRING").withColumn(
        "measured_at", F.to_timestamp("measured_at"))
    tables = {"person": persons, "encounter": encounters}
    got = quality.check_counts(vitals, checks, tables.__getitem__)
    expected = spark.createDataFrame([("H01", 4, 1, 1), ("H02", 3, 0, 1)],
                                     "hospital_id STRING, _checked LONG, _failed0 LONG, _failed1 LONG")
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)
    bad = DqTable(table="lab_result", checks=[checks[0].model_copy(update={"columns": ["value"]})])
    with pytest.raises(ConfigError, match="kind after_birth takes a TIMESTAMP column") as caught:
        quality.validate(spark, settings.model_copy(update={"dq": {"lab_result": bad}}))
    assert caught.value.key == "checks.0.columns"
