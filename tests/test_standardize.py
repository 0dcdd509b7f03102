"""Silver's column functions on one rich DataFrame each (chispa column equality)."""

from __future__ import annotations

from chispa import assert_column_equality
from pyspark.sql import functions as F

from lakehouse.silver.standardize import clean_text, national_id_is_valid, normalize_icd10, parse_timestamp


def test_text_icd10_and_national_id(spark):
    rows = [
        # raw text,        cleaned,   raw icd,      icd10,   national id,            valid
        ("  ＡＢＣ１２３ ", "ABC123", "E11.900", "E11.9", "11010519491231002X", True),
        ("a\t\t b", "a b", "e119", "E11.9", "11010519491231002x", True),
        ("\u3000", None, " I50 ", "I50", "110105194912310021", False),
        (None, None, "N18.3", "N18.3", "1101051949123100", False),
        ("正常", "正常", "高血压", None, None, False),
    ]
    df = spark.createDataFrame(rows, "raw STRING, cleaned STRING, icd STRING, icd10 STRING, nid STRING, valid BOOLEAN")
    result = df.select(clean_text(F.col("raw")).alias("got_clean"), "cleaned",
                       normalize_icd10(F.col("icd")).alias("got_icd"), "icd10",
                       national_id_is_valid(F.col("nid")).alias("got_valid"), "valid")
    assert_column_equality(result, "got_clean", "cleaned")
    assert_column_equality(result, "got_icd", "icd10")
    assert_column_equality(result, "got_valid", "valid")


def test_timestamps_use_each_hospitals_format(spark):
    formats = {"H01": "yyyy-MM-dd HH:mm:ss", "H02": "yyyy/MM/dd HH:mm", "H03": "yyyyMMddHHmmss"}
    rows = [
        ("H01", "2025-03-04 05:06:07", "2025-03-04 05:06:07"),
        ("H02", "2025/03/04 05:06", "2025-03-04 05:06:00"),
        ("H03", "20250304050607", "2025-03-04 05:06:07"),
        ("H01", "2025/03/04 05:06", None),  # another hospital's format is not guessed
        ("H09", "2025-03-04 05:06:07", None),  # no contract, no format
        ("H03", "not a date", None),
    ]
    df = (spark.createDataFrame(rows, "hospital STRING, raw STRING, expected STRING")
          .withColumn("expected", F.to_timestamp("expected")))
    result = df.withColumn("parsed", parse_timestamp(F.col("raw"), F.col("hospital"), formats))
    assert_column_equality(result, "parsed", "expected")
