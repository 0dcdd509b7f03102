"""Pure transforms with inline rows and exact expected rows (chispa)."""

from __future__ import annotations

import datetime as dt

import pandas as pd
from chispa import assert_df_equality
from pyspark.sql import functions as F

from lakehouse.bronze import readers
from lakehouse.config import EntitySource
from lakehouse.gold.features import build_features
from lakehouse.silver.refine import latest_per_key, standardize_labs
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


def test_features_use_only_events_before_index_and_label_from_window(spark, settings):
    task = settings.tasks["readmission_30d"]
    t = dt.datetime
    encounters = spark.createDataFrame([
        ("p1", "e1", "H01", "inpatient", t(2024, 1, 1), t(2024, 1, 5), "home"),
        ("p1", "e2", "H02", "inpatient", t(2024, 1, 20), t(2024, 1, 22), "home"),  # readmission of e1
        ("p2", "e3", "H01", "inpatient", t(2024, 3, 1), t(2024, 3, 3), "death"),  # not an index event
    ], "person_key STRING, encounter_key STRING, hospital_id STRING, encounter_type STRING, admit_time TIMESTAMP, "
       "discharge_time TIMESTAMP, discharge_disposition STRING")
    persons = spark.createDataFrame([("p1", 1950, "male"), ("p2", 1960, "female")],
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
        ("p1", t(2024, 12, 31), "VISIT//OUTPATIENT", None, "e9"),  # data end: both windows complete
    ], "person_key STRING, time TIMESTAMP, code STRING, numeric_value DOUBLE, encounter_key STRING")
    got = build_features(encounters, persons, timeline, task, 7).select(
        "encounter_key", "age", "prior_admissions", "diabetes", "heart_failure", "last_creatinine",
        "length_of_stay_days", "label", "timeline_version")
    expected = spark.createDataFrame([
        ("e1", 74.0, 1.0, 1.0, 0.0, 120.0, 4.0, 1, 7),
        ("e2", 74.0, 2.0, 1.0, 1.0, 999.0, 2.0, 0, 7),
    ], "encounter_key STRING, age DOUBLE, prior_admissions DOUBLE, diabetes DOUBLE, heart_failure DOUBLE, "
       "last_creatinine DOUBLE, length_of_stay_days DOUBLE, label INT, timeline_version BIGINT")
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)
