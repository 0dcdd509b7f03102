"""Silver's column functions on one rich DataFrame each (chispa column equality)."""

from __future__ import annotations

from chispa import assert_column_equality
from conftest import CONF
from pyspark.sql import functions as F

from lakehouse.silver import vocab
from lakehouse.silver.refine import deidentified_age
from lakehouse.silver.standardize import (
    clean_text,
    is_cancelled,
    mask_identifiers,
    national_id_is_valid,
    normalize_icd9cm3,
    normalize_icd10,
    parse_timestamp,
)


def test_text_icd10_and_national_id(spark):
    rows = [
        # raw text,        cleaned,   raw icd,      icd10,   national id,            valid
        ("  ＡＢＣ１２３ ", "ABC123", "E11.900", "E11.9", "11010519491231002X", True),
        ("a\t\t b", "a b", "e119", "E11.9", "11010519491231002x", True),
        ("\u3000", None, " I50 ", "I50", "110105194912310021", False),
        ("x", "x", "I10.x00", "I10", None, False),  # the national edition's placeholder: no subcategory
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


def test_procedure_codes_cancellations_and_identifiers_in_text(spark):
    cancelled = {"H02": ["作废"], "H05": ["entered-in-error"]}
    rows = [
        # raw procedure, icd9cm3, hospital, status, cancelled, text, masked
        ("3606", "36.06", "H02", " 作废 ", True,
         "患者，身份证号11010519491231002X，联系电话13912345678。", "患者，身份证号[身份证号]，联系电话[电话]。"),
        (" 36.06 ", "36.06", "H02", "正常", False, "病案号M0001234，因肺炎入院", "病案号[病案号]，因肺炎入院"),
        ("81.51", "81.51", "H05", "entered-in-error", True, "编号123456789012345678901", "编号123456789012345678901"),
        ("47.9", "47.9", "H05", "final", False, None, None),
        # names after a cue (a relative's name is in no registration), Latin names, addresses, +86 phones
        ("47.09", "47.09", "H01", "final", False, "患者欧阳明华，由家属李春梅陪同。患者诉头痛，家属陪同",
         "患者[姓名]，由家属[姓名]陪同。患者诉头痛，家属陪同"),
        ("47.09", "47.09", "H03", "final", False, "患者WANG XIAOMING，住天津市和平区解放路12号，电话+86 139-1234-5678",
         "患者[姓名]，住[地址]，电话[电话]"),
        ("47.09", "47.09", "H03", "final", False, "高血压病史，呼吸道感染3天", "高血压病史，呼吸道感染3天"),
        ("ZZ0123", None, "H01", "作废", False, "住院12天", "住院12天"),  # H01 does not cancel with 作废
        (None, None, "H05", None, False, "", ""),
    ]
    df = spark.createDataFrame(rows, "raw STRING, expected STRING, hospital STRING, status STRING, cancelled BOOLEAN, "
                                     "text STRING, masked STRING")
    result = df.select(normalize_icd9cm3(F.col("raw")).alias("got_code"), "expected",
                       is_cancelled(F.col("status"), F.col("hospital"), cancelled).alias("got_cancelled"), "cancelled",
                       mask_identifiers(F.col("text"), vocab.surnames(CONF / "vocab")).alias("got_masked"), "masked")
    assert_column_equality(result, "got_code", "expected")
    assert_column_equality(result, "got_cancelled", "cancelled")
    assert_column_equality(result, "got_masked", "masked")


def test_ages_are_told_as_of_the_records_last_update_not_the_day_of_the_refine(spark):
    rows = [
        # birth,     updated,      birth year, age band
        ("1936-12-01", "2026-11-30", 1936, "85-89"),  # 90 the day after: a refine at midnight changes nothing
        ("1936-12-01", "2026-12-01", 1936, "90+"),
        ("1930-05-05", "2026-01-01", 1936, "90+"),  # top-coded
        ("1930-05-05", "2018-01-01", 1930, "85-89"),  # 87 when last updated
        ("2000-03-01", "2025-02-28", 2000, "20-24"),
        ("2000-03-01", "2025-03-01", 2000, "25-29"),
        ("2030-01-01", "2025-01-01", 2030, None),  # born after the update: no age (DQ rules flag the birth)
        ("1980-01-01", None, 1980, None),  # no update time: no age band
        (None, "2025-01-01", None, None),
    ]
    df = (spark.createDataFrame(rows, "birth STRING, updated STRING, want_birth_year INT, want_age_band STRING")
          .withColumns({"birth": F.to_timestamp("birth"), "updated": F.to_timestamp("updated")}))
    got = df.select("*", *deidentified_age(F.col("birth"), F.col("updated")))  # birth_year, age_band
    assert_column_equality(got, "birth_year", "want_birth_year")
    assert_column_equality(got, "age_band", "want_age_band")
