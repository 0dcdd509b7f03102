"""Pure transforms with inline rows and exact expected rows (chispa)."""

from __future__ import annotations

import datetime as dt

import pandas as pd
from chispa import assert_approx_df_equality, assert_df_equality
from pyspark.sql import functions as F

from lakehouse.bronze import readers
from lakehouse.config import EntitySource
from lakehouse.gold.features import build_features
from lakehouse.silver import remap
from lakehouse.silver.refine import (
    latest_per_key,
    standardize_diagnoses,
    standardize_labs,
    standardize_medications,
    standardize_procedures,
    standardize_vitals,
)
from lakehouse.silver.vocab import load

KEY = bytes(32)


LAB_COLUMNS = {"result_id": "单号", "encounter_id": "流水号", "mrn": "病案号", "test_code": "代码",
               "test_name": "名称", "value": "结果", "unit": "单位", "reference_range": "参考", "abnormal_flag": "标志",
               "result_time": "时间", "status": "状态", "updated_at": "更新"}


def test_csv_reader_numbers_lines_quarantines_bad_ones_and_keeps_unmapped_columns(spark, tmp_path):
    source = EntitySource(pattern="lab-*.tsv", encoding="GB18030", delimiter="\t", columns=LAB_COLUMNS)
    header = "\t".join([*LAB_COLUMNS.values(), "新列"])

    def line(result_id: str, extra: str, name: str = "葡萄糖") -> str:
        return "\t".join([result_id, "e1", "m1", "GLU", name, "5.1", "mmol/L", "3.9-6.1", "", "t", "正常", "u", extra])

    path = tmp_path / "lab-1.tsv"
    path.write_bytes(b"".join([
        f"{header}\n{line('r1', '复核')}\n".encode("gb18030"),
        "r2\te1\tm1\n".encode("gb18030"),  # cut short
        f"{line('r3', '', '中文')}\n".encode(),  # UTF-8 in a GB18030 file: decodes, to other characters
        f"{line('r5', '', 'XX')}\n".encode("gb18030").replace(b"XX", b"\x80\x80"),  # bytes GB18030 has not
        f"{line('r4', '')}\n".encode("gb18030"),
    ]))
    records = readers.number(readers.parse(spark, "csv", {"lab_result": source}, [str(path)]))
    columns, extra = readers.project(records, "csv", source)
    got = records.select("_source_line", columns[0], columns[4], extra["新列"].alias("extra"), "_error",
                         F.col("_raw").isNotNull().alias("raw_kept"))
    expected = spark.createDataFrame([
        (2, "r1", "葡萄糖", "复核", None, False),
        (3, "r2", None, None, "malformed line: 3 fields where the header has 13", True),
        (4, "r3", got.where("result_id = 'r3'").first().test_name, None,
         "wrong encoding: a UTF-8 line in a GB18030 file", True),
        (5, "r5", "\ufffd\ufffd", None, "wrong encoding: bytes that are not GB18030", True),
        (6, "r4", "葡萄糖", None, None, False)],
        "_source_line BIGINT, result_id STRING, test_name STRING, extra STRING, _error STRING, raw_kept BOOLEAN")
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def test_latest_per_key_prefers_newest_update_then_latest_ingest(spark):
    rows = [("H01", "a", 1, "2025-01-01", "f1", 2), ("H01", "a", 2, "2025-01-02", "f1", 3),  # resend wins
            ("H01", "b", 3, "2025-01-01", "f1", 4), ("H01", "b", 4, "2025-01-01", "f2", 2),  # same time: later ingest
            ("H02", "a", 5, "2025-01-01", "f3", 2)]  # same id, other hospital: its own record
    df = (spark.createDataFrame(rows, "_hospital_id STRING, id STRING, n INT, updated STRING, _source_file STRING, "
                                      "_source_line INT")
          .withColumn("_ingested_at", F.when(F.col("_source_file") == "f2", F.lit("2025-02-02")).otherwise(
              F.lit("2025-02-01")).cast("timestamp")))
    got = latest_per_key(df, ["_hospital_id", "id"], F.to_date("updated")).select("_hospital_id", "id", "n")
    expected = spark.createDataFrame([("H01", "a", 2), ("H01", "b", 4), ("H02", "a", 5)],
                                     "_hospital_id STRING, id STRING, n INT")
    assert_df_equality(got, expected, ignore_row_order=True)


def test_labs_map_to_loinc_and_convert_units_or_flag(spark, settings):
    bronze = spark.createDataFrame(pd.DataFrame({
        "result_id": ["1", "2", "3", "4", "5"], "encounter_id": "e", "mrn": "m",
        "test_code": ["0101", "0205", "GLU", "XYZ", "GLU"], "test_name": "t",
        "value": ["180", "1.00", "5.5", "3", "5.5"], "unit": ["mg/dL", "mg/dL", "mmol/L", "mmol/L", "mg/L"],
        "result_time": ["2025/01/01 08:00", "2025/01/01 08:00", "2025-01-01 08:00:00", "2025-01-01 08:00:00",
                        "2025-01-01 08:00:00"],
        "updated_at": None, "_hospital_id": ["H02", "H02", "H01", "H01", "H01"], "_source_file": "f",
        "_source_line": [2, 3, 4, 5, 6], "_batch_id": "b", "_ingested_at": pd.Timestamp("2025-01-02")}))
    persons = spark.createDataFrame([], "patient_key STRING, person_key STRING")
    labs = standardize_labs(bronze, persons, load(spark, settings.vocab_dir, "lab_codes"),
                            load(spark, settings.vocab_dir, "units"), KEY, settings, "v-test")
    got = labs.select("source_code", "loinc_code", "value", "unit", "is_mapped", "unit_ok", "result_time")
    expected = spark.createDataFrame([
        ("0101", "14749-6", 9.9911, "mmol/L", True, True, dt.datetime(2025, 1, 1, 8)),
        ("0205", "14682-9", 88.42, "umol/L", True, True, dt.datetime(2025, 1, 1, 8)),
        ("GLU", "14749-6", 5.5, "mmol/L", True, True, dt.datetime(2025, 1, 1, 8)),
        ("XYZ", None, None, None, False, False, dt.datetime(2025, 1, 1, 8)),   # unknown code: kept, flagged
        ("GLU", "14749-6", None, None, True, False, dt.datetime(2025, 1, 1, 8)),  # unknown unit: not guessed
    ], "source_code STRING, loinc_code STRING, value DOUBLE, unit STRING, is_mapped BOOLEAN, unit_ok BOOLEAN, "
       "result_time TIMESTAMP")
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def _bronze(spark, **columns):
    """A bronze frame: the given columns plus lineage defaults (one file, lines from 2)."""
    n = len(next(v for v in columns.values() if isinstance(v, list)))
    frame = pd.DataFrame({"encounter_id": "e", "mrn": "m", "updated_at": None, "_source_file": "f",
                          "_source_line": range(2, n + 2), "_batch_id": "b", "_ingested_at": pd.Timestamp("2025-01-02"),
                          **columns})
    return spark.createDataFrame(frame)


def test_vitals_convert_to_canonical_units_and_medications_map_to_atc(spark, settings):
    vitals = _bronze(spark, vital_id=["1", "2", "3", "4", "5"], _hospital_id=["H01", "H01", "H05", "H02", "H01"],
                     measure_code=["T", " P ", "8480-6", "HL-SBP", "T"], measure_name="n",
                     value=["36.8", "88", "120", "118", "36.8"], unit=["℃", "次/分", "mm[Hg]", "mmHg", "°F"],
                     measured_at=["2025-01-01 08:00:00", "2025-01-01 08:00:00", "2025-01-01T08:00:00+08:00",
                                  "2025/01/01 08:00", "2025-01-01 08:00:00"])
    persons = spark.createDataFrame([], "patient_key STRING, person_key STRING")
    got = standardize_vitals(vitals, persons, load(spark, settings.vocab_dir, "vital_codes"),
                             load(spark, settings.vocab_dir, "units"), KEY, settings, "v-test").select(
        "source_code", "loinc_code", "value", "unit", "is_mapped", "unit_ok", "measured_at", "vocab_version",
        "source_line", "_cancelled")
    at = dt.datetime(2025, 1, 1, 8)
    expected = spark.createDataFrame([
        ("T", "8310-5", 36.8, "Cel", True, True, at, "v-test", 2, False),
        ("P", "8867-4", 88.0, "/min", True, True, at, "v-test", 3, False),
        ("8480-6", "8480-6", 120.0, "mm[Hg]", True, True, at, "v-test", 4, False),
        ("HL-SBP", "8480-6", 118.0, "mm[Hg]", True, True, at, "v-test", 5, False),
        ("T", "8310-5", None, None, True, False, at, "v-test", 6, False),  # a unit without a factor: not guessed
    ], "source_code STRING, loinc_code STRING, value DOUBLE, unit STRING, is_mapped BOOLEAN, unit_ok BOOLEAN, "
       "measured_at TIMESTAMP, vocab_version STRING, source_line BIGINT, _cancelled BOOLEAN")
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)

    meds = _bronze(spark, order_id=["1", "2", "3", "3"], _hospital_id=["H02", "H03", "H05", "H05"],
                   drug_code=["YPD001", "XD999", "RXD005", "RXD005"], drug_name="n", dose=["500", "abc", "2", "2"],
                   dose_unit="mg", route="PO", frequency="qd", start_time=None, end_time=None,
                   status=["正常", "N", "final", "entered-in-error"],
                   updated_at=[None, None, "2025-01-01T08:00:00+08:00", "2025-01-02T09:00:00+08:00"])
    got = standardize_medications(meds, persons, load(spark, settings.vocab_dir, "drug_codes"), KEY, settings,
                                  "v-test").select("source_code", "atc_code", "dose", "source_dose", "is_mapped",
                                                   "_cancelled")
    expected = spark.createDataFrame([
        ("YPD001", "A10BA02", 500.0, "500", True, False),
        ("XD999", None, None, "abc", False, False),  # unknown code and a dose that is no number: kept, flagged
        ("RXD005", "J01DD04", 2.0, "2", True, True),  # the later resend cancels the order
    ], "source_code STRING, atc_code STRING, dose DOUBLE, source_dose STRING, is_mapped BOOLEAN, _cancelled BOOLEAN")
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def test_diagnoses_and_procedures_normalize_codes_and_use_names_when_the_code_is_missing(spark, settings):
    persons = spark.createDataFrame([], "patient_key STRING, person_key STRING")
    dx = _bronze(spark, diagnosis_id=["1", "2", "3", "4"], _hospital_id=["H02", "H03", "H01", "H01"],
                 icd_code=["E119", "E11.900", "", "ZZ0042"], diagnosis_name=["x", "y", "原发性高血压", "肺炎"],
                 diagnosis_time=None, status=["正常", "N", "final", "final"])
    got = standardize_diagnoses(dx, persons, load(spark, settings.vocab_dir, "icd10"), KEY, settings,
                                "v-test").select("source_code", "icd10_code", "is_mapped")
    expected = spark.createDataFrame([
        ("E119", "E11.9", True), ("E11.900", "E11.9", True),
        (None, "I10", True),  # no code: found by its Chinese name
        ("ZZ0042", None, False),  # a code that is wrong is not replaced by a guess from the name
    ], "source_code STRING, icd10_code STRING, is_mapped BOOLEAN")
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)
    procedures = _bronze(spark, procedure_id=["1", "2", "3"], _hospital_id="H01",
                         procedure_code=["3606", "81.51", "99.99"], procedure_name="n", procedure_time=None)
    got = standardize_procedures(procedures, persons, load(spark, settings.vocab_dir, "icd9cm3"), KEY, settings,
                                 "v-test").select("source_code", "icd9cm3_code", "is_mapped")
    expected = spark.createDataFrame([("3606", "36.06", True), ("81.51", "81.51", True), ("99.99", None, False)],
                                     "source_code STRING, icd9cm3_code STRING, is_mapped BOOLEAN")
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def test_features_use_only_events_before_index_and_label_from_window(spark, settings):
    task = settings.tasks["readmission_30d"]
    t = dt.datetime
    encounters = spark.createDataFrame([
        ("p1", "e1", "H01", "inpatient", t(2024, 1, 1), t(2024, 1, 5), "home"),
        ("p1", "e2", "H02", "inpatient", t(2024, 1, 20), t(2024, 1, 22), "home"),  # readmission of e1
        ("p2", "e3", "H01", "inpatient", t(2024, 3, 1), t(2024, 3, 3), "death"),  # not an index event
        ("p3", "e4", "H03", "inpatient", t(2024, 12, 18), t(2024, 12, 20), "home"),  # window open at data end
    ], "person_key STRING, encounter_key STRING, hospital_id STRING, encounter_type STRING, admit_time TIMESTAMP, "
       "discharge_time TIMESTAMP, discharge_disposition STRING")
    persons = spark.createDataFrame([("p1", 1950, "male"), ("p2", 1960, "female"), ("p3", 1980, "female")],
                                    "person_key STRING, birth_year INT, sex STRING")
    timeline = spark.createDataFrame([
        ("p1", t(2023, 6, 1), "ADMISSION//INPATIENT", None, "e0"),
        ("p1", t(2023, 6, 2), "ICD10//E11.9", None, "e0"),
        ("p1", t(2024, 1, 1), "ADMISSION//INPATIENT", None, "e1"),
        ("p1", t(2024, 1, 2), "LOINC//14682-9", 150.0, "e1"),
        ("p1", t(2024, 1, 3), "LOINC//14682-9", 120.0, "e1"),
        ("p1", t(2024, 1, 20), "ADMISSION//INPATIENT", None, "e2"),
        ("p1", t(2024, 1, 21), "LOINC//14682-9", 999.0, "e2"),  # after e1's index: must not leak into e1
        ("p1", t(2024, 1, 21), "ICD10//I50.9", None, "e2"),
        ("p1", t(2024, 1, 22), "LOINC//14682-9", 500.0, "e2"),  # at e2's index itself: not seen
        ("p3", t(2024, 12, 18), "ADMISSION//INPATIENT", None, "e4"),
    ], "person_key STRING, time TIMESTAMP, code STRING, numeric_value DOUBLE, encounter_key STRING")
    got = build_features(task, settings.features, encounters, persons, timeline, {"gold.patient_timeline": 7},
                         dt.date(2025, 1, 1)).select(
        "encounter_key", "age", "stay_hours", "utilisation_admissions_365d", "comorbidity_diabetes",
        "comorbidity_heart_failure", "labs_creatinine_count_30d", "labs_creatinine_last_365d",
        "labs_creatinine_slope_30d", "label", F.col("source_versions")["gold.patient_timeline"].alias("v"))
    expected = spark.createDataFrame([
        ("e1", 74.0, 96.0, 1.0, 1.0, 0.0, 2.0, 120.0, -30.0, 1, 7),
        ("e2", 74.0, 48.0, 2.0, 1.0, 1.0, 3.0, 999.0, 46.535, 0, 7),
        ("e4", 44.0, 48.0, 0.0, 0.0, 0.0, 0.0, None, None, None, 7),
    ], "encounter_key STRING, age DOUBLE, stay_hours DOUBLE, utilisation_admissions_365d DOUBLE, "
       "comorbidity_diabetes DOUBLE, comorbidity_heart_failure DOUBLE, labs_creatinine_count_30d DOUBLE, "
       "labs_creatinine_last_365d DOUBLE, labs_creatinine_slope_30d DOUBLE, label INT, v BIGINT")
    assert_approx_df_equality(got, expected, 0.01, ignore_row_order=True, ignore_nullable=True)


def test_a_code_mapping_change_selects_the_records_holding_a_changed_code(spark):
    before = {"lab_codes": frozenset({("H1", "GLU", "2345-7", "Glucose")}),
              "units": frozenset({("2345-7", "mg/dL", "mmol/L", "0.0555")}),
              "icd10": frozenset({("E11.9", "2型糖尿病"), ("I10", "高血压")}),
              "icd9cm3": frozenset({("88.72", "心脏超声")})}
    now = {"lab_codes": before["lab_codes"] | {("H2", "X9", "2160-0", "Creatinine")},  # a local code mapped
           "units": frozenset({("2345-7", "mg/dL", "mmol/L", "0.0556")}),  # a factor corrected
           "icd10": frozenset({("E11.9", "2型糖尿病不伴并发症"), ("I10", "高血压")}),  # a name changed
           "icd9cm3": before["icd9cm3"] | {("36.06", "冠状动脉支架置入")}}  # a code added
    changes = remap.changed(before, now)
    assert changes == {"lab_codes": {("H2", "X9", "2160-0", "Creatinine")},
                       "units": {("2345-7", "mg/dL", "mmol/L", "0.0555"), ("2345-7", "mg/dL", "mmol/L", "0.0556")},
                       "icd10": {("E11.9", "2型糖尿病"), ("E11.9", "2型糖尿病不伴并发症")},
                       "icd9cm3": {("36.06", "冠状动脉支架置入")}}
    measured = ("hospital_id STRING, source_id STRING, source_file STRING, source_line BIGINT, source_code STRING, "
                "loinc_code STRING, source_unit STRING")
    labs = spark.createDataFrame([
        ("H1", "r1", "/l/H1/d1/lab.csv", 2, "GLU", "2345-7", "mg/dL"),  # its unit's factor changed
        ("H1", "r2", "/l/H1/d1/lab.csv", 3, "K", "2823-3", "mmol/L"),
        ("H2", "r3", "/l/H2/d1/lab.csv", 2, "X9", None, "umol/L"),  # its code is mapped now
        ("H1", None, "/l/H1/d1/lab.csv", 7, "X9", None, "umol/L"),  # the same local code at another hospital
        ("H2", None, "/l/H2/d2/lab.csv", 9, "X9", None, "umol/L")], measured)  # no id: keyed by file and line
    vitals = spark.createDataFrame([("H1", "v1", "/l/H1/d1/vital.csv", 2, "HR", "8867-4", "次/分")], measured)
    diagnoses = spark.createDataFrame([
        ("H1", "d1", "/l/H1/d1/dx.csv", 2, "E11.9", "2型糖尿病", "E11.9"),  # its code's entry changed
        ("H1", "d2", "/l/H1/d1/dx.csv", 3, None, "2型糖尿病不伴并发症", None),  # no code: its name is an entry now
        ("H1", "d3", "/l/H1/d1/dx.csv", 4, "I10", "2型糖尿病", "I10")],  # a code: its name is not looked up
        "hospital_id STRING, source_id STRING, source_file STRING, source_line BIGINT, source_code STRING, "
        "source_name STRING, icd10_code STRING")
    procedures = spark.createDataFrame([
        ("H1", "p1", "/l/H1/d1/op.csv", 2, "3606"),  # unmapped until now: matched by its normalized code
        ("H1", "p2", "/l/H1/d1/op.csv", 3, "88.72")],
        "hospital_id STRING, source_id STRING, source_file STRING, source_line BIGINT, source_code STRING")
    found = remap.affected({"lab_result": labs, "vital_sign": vitals, "diagnosis": diagnoses,
                            "procedure": procedures}, changes)
    assert sorted(found) == ["diagnosis", "lab_result", "procedure", "vital_sign"]  # medication: drug codes unchanged
    keys = {table: sorted((r[0], r[1]) for r in frame.collect()) for table, frame in found.items()}
    assert keys == {"lab_result": [("H1", "r1"), ("H2", "line:d2/lab.csv:9"), ("H2", "r3")], "vital_sign": [],
                    "diagnosis": [("H1", "d1"), ("H1", "d2")], "procedure": [("H1", "p1")]}
