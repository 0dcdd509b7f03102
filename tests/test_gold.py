"""Gold: the timeline is silver's events, cohorts match a brute-force reference, indicators match hand
counts, the MEDS export passes the MEDS schemas, and an increment equals a full rebuild."""

from __future__ import annotations

import datetime as dt
import json

import meds
import pandas as pd
import pyarrow.parquet as pq
import pytest
from chispa import assert_approx_df_equality
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakehouse import io
from lakehouse.catalog import (
    COHORT_ATTRITION,
    COHORT_STEPS,
    DIAGNOSIS,
    ENCOUNTER,
    INDICATOR_INPATIENT_DAILY,
    INDICATOR_REGISTRY,
    LAB_RESULT,
    MEDICATION,
    PATIENT_SUMMARY,
    PERSON,
    PROCEDURE,
    TIMELINE,
    VITAL_SIGN,
    cohort_table,
    features_table,
)
from lakehouse.cli import main
from lakehouse.config import Beds
from lakehouse.gold.build import build, build_full, silver_tables
from lakehouse.gold.cohort import evaluate
from lakehouse.gold.indicators import inpatient_daily
from lakehouse.gold.meds import SEX_PREFIX, export_meds
from lakehouse.gold.timeline import SOURCE_TABLES, laid_out, person_timeline

AS_OF = dt.date(2025, 10, 1)  # configured, not today: the region's history ends 2025-12-31
CUT = pd.Timestamp(AS_OF)


def _pandas(spark, region, ref, *columns: str) -> pd.DataFrame:
    return io.read(spark, ref, region.settings.root).select(*columns).toPandas()


# --- timeline -------------------------------------------------------------------------------------

def _expected_events(spark, region) -> pd.DataFrame:
    """(person, source table, source key, time, code) from silver, by the rules the README gives."""
    def coded(ref, key, time, system, standard, local):
        frame = _pandas(spark, region, ref, "person_key", key, time, "is_mapped", standard, "hospital_id",
                        "source_code")
        sent = zip(frame.is_mapped, frame[standard], frame.hospital_id, frame.source_code, strict=True)
        code = [f"{system}//{s}" if m else f"{local}//{h}/{c if c is not None else '?'}" for m, s, h, c in sent]
        return pd.DataFrame({"person_key": frame.person_key, "source_table": ref.qualified, "source_key": frame[key],
                             "time": frame[time], "code": code})

    enc = _pandas(spark, region, ENCOUNTER, "person_key", "encounter_key", "encounter_type", "admit_time",
                  "discharge_time", "discharge_disposition")
    inpatient = enc[enc.encounter_type == "inpatient"]
    start = ["ADMISSION//INPATIENT" if t == "inpatient" else f"VISIT//{(t or 'unknown').upper()}"
             for t in enc.encounter_type]
    ended = inpatient[inpatient.discharge_time.notna()]
    died = ended[ended.discharge_disposition == "death"]
    person = _pandas(spark, region, PERSON, "person_key", "birth_year").groupby("person_key", as_index=False).min()
    person = person[person.birth_year.notna()]
    frames = [
        pd.DataFrame({"person_key": person.person_key, "source_table": "silver.person", "source_key": person.person_key,
                      "time": pd.to_datetime(person.birth_year.astype(int).astype(str) + "-01-01"),
                      "code": "MEDS_BIRTH"}),
        pd.DataFrame({"person_key": enc.person_key, "source_table": "silver.encounter",
                      "source_key": enc.encounter_key, "time": enc.admit_time, "code": start}),
        pd.DataFrame({"person_key": ended.person_key, "source_table": "silver.encounter",
                      "source_key": ended.encounter_key, "time": ended.discharge_time,
                      "code": "DISCHARGE//INPATIENT"}),
        pd.DataFrame({"person_key": died.person_key, "source_table": "silver.encounter",
                      "source_key": died.encounter_key, "time": died.discharge_time, "code": "MEDS_DEATH"}),
        coded(DIAGNOSIS, "diagnosis_key", "diagnosis_time", "ICD10", "icd10_code", "LOCAL_DX"),
        coded(LAB_RESULT, "lab_key", "result_time", "LOINC", "loinc_code", "LOCAL_LAB"),
        coded(VITAL_SIGN, "vital_key", "measured_at", "LOINC", "loinc_code", "LOCAL_VITAL"),
        coded(PROCEDURE, "procedure_key", "procedure_time", "ICD9CM3", "icd9cm3_code", "LOCAL_PROC"),
        coded(MEDICATION, "medication_key", "start_time", "ATC", "atc_code", "LOCAL_DRUG"),
    ]
    events = pd.concat(frames, ignore_index=True)
    return events[events.person_key.notna() & events.time.notna()]


def test_the_timeline_is_exactly_the_union_of_each_persons_silver_events(spark, region):
    expected = _expected_events(spark, region)
    timeline = io.read(spark, TIMELINE, region.settings.root)
    actual = timeline.select("person_key", "source_table", "source_key", "time", "code").toPandas()
    assert len(expected) > 50_000 and set(expected.source_table) == {r.qualified for r in SOURCE_TABLES}
    key = ["person_key", "source_table", "source_key", "code", "time"]
    assert actual.sort_values(key).reset_index(drop=True).equals(expected[key].sort_values(key)
                                                                  .reset_index(drop=True)[actual.columns])
    # values: a converted lab keeps its canonical value and unit; one not converted keeps the text as sent
    labs = timeline.where(F.col("source_table") == "silver.lab_result").join(
        io.read(spark, LAB_RESULT, region.settings.root).select(F.col("lab_key").alias("source_key"), "value", "unit",
                                                                "unit_ok", "is_mapped", "source_value"),
        "source_key")
    usable = F.col("unit_ok") & F.col("is_mapped")
    assert labs.where(usable & ~(F.col("numeric_value").eqNullSafe(F.col("value")))).count() == 0
    assert labs.where(~usable & (F.col("numeric_value").isNotNull()
                                 | ~F.col("text_value").eqNullSafe(F.col("source_value")))).count() == 0


def test_one_persons_timeline_reads_at_most_five_percent_of_the_files(spark, region, tmp_path):
    timeline = io.read(spark, TIMELINE, region.settings.root)
    root = str(tmp_path)
    laid_out(timeline, 40).write.format("delta").save(TIMELINE.path(root))
    people = [r.person_key for r in timeline.select("person_key").distinct().orderBy(F.rand(3)).limit(5).collect()]
    for person in people:
        read = person_timeline(spark, root, person)
        rows = read.collect()
        assert len(rows) == timeline.where(F.col("person_key") == person).count() > 0
        assert [r.time for r in rows] == sorted(r.time for r in rows)
        assert 1 <= io.files_scanned(read) <= 2  # of 40


# --- cohorts --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def silver_frames(spark, region) -> dict[str, pd.DataFrame]:
    dx = _pandas(spark, region, DIAGNOSIS, "person_key", "encounter_key", "icd10_code", "diagnosis_time", "is_mapped")
    labs = _pandas(spark, region, LAB_RESULT, "person_key", "loinc_code", "result_time", "is_mapped")
    vitals = _pandas(spark, region, VITAL_SIGN, "person_key", "loinc_code", "measured_at", "is_mapped")
    persons = _pandas(spark, region, PERSON, "person_key", "birth_year").groupby("person_key").birth_year.min()
    enc = _pandas(spark, region, ENCOUNTER, "person_key", "encounter_key", "encounter_type", "admit_time")
    enc = enc[enc.person_key.notna() & enc.admit_time.notna() & (enc.admit_time < CUT)]
    enc["age"] = enc.admit_time.dt.year - enc.person_key.map(persons)
    return {"dx": dx[dx.is_mapped & dx.diagnosis_time.notna() & (dx.diagnosis_time < CUT)],
            "labs": labs[labs.is_mapped & labs.result_time.notna() & (labs.result_time < CUT)],
            "vitals": vitals[vitals.is_mapped & vitals.measured_at.notna() & (vitals.measured_at < CUT)],
            "enc": enc}


def _with_code(dx: pd.DataFrame, *prefixes: str) -> pd.DataFrame:
    return dx[dx.icd10_code.str.startswith(prefixes)]


def _reference(name: str, f: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, list[int]]:
    """Members (person, index time, encounter, flags) and persons after each attrition step, by hand."""
    enc, dx = f["enc"], f["dx"]
    inpatient = enc[enc.encounter_type == "inpatient"].rename(columns={"admit_time": "index_time"})
    if name == "diabetes_inpatients":
        index = inpatient[inpatient.index_time >= CUT - pd.Timedelta(days=1826)]
        adult = index[index.age >= 18]
        diabetic = adult[adult.person_key.isin(_with_code(dx, "E10", "E11").person_key)]
        kept = diabetic[~diabetic.person_key.isin(_with_code(dx, "O24").person_key)]
        members = kept.sort_values(["index_time", "encounter_key"]).groupby("person_key").head(1).copy()
        hba1c = f["labs"][f["labs"].loinc_code == "4548-4"]
        members["flags"] = [
            ["hba1c_monitored"] if ((hba1c.person_key == p) & (hba1c.result_time >= t - pd.Timedelta(days=365))
                                    & (hba1c.result_time <= t)).sum() >= 2 else []
            for p, t in zip(members.person_key, members.index_time, strict=True)]
        members["series"] = [int((hba1c.person_key == p).sum()) for p in members.person_key]
        steps = [index, adult, diabetic, kept, members]
    elif name == "heart_failure_admissions":
        index = inpatient
        adult = index[index.age >= 18]
        members = adult[adult.encounter_key.isin(_with_code(dx, "I50").encounter_key)].copy()
        ckd = _with_code(dx, "N18")
        members["flags"] = [["ckd"] if ((ckd.person_key == p) & (ckd.diagnosis_time <= t)).any() else []
                            for p, t in zip(members.person_key, members.index_time, strict=True)]
        steps = [index, adult, members]
    else:
        index = _with_code(dx, "I10", "I11", "I12", "I13", "I15").rename(columns={"diagnosis_time": "index_time"})
        members = index.sort_values(["index_time", "encounter_key"]).groupby("person_key").head(1).copy()
        since = CUT - pd.Timedelta(days=90)
        seen = set(enc.loc[enc.admit_time >= since, "person_key"])
        bp = f["vitals"][f["vitals"].loinc_code.isin(["8480-6", "8462-4"]) & (f["vitals"].measured_at >= since)]
        seen |= set(bp.person_key)
        members["flags"] = [[] if p in seen else ["overdue_follow_up"] for p in members.person_key]
        steps = [index, members]
    return members, [s.person_key.nunique() for s in steps]


@pytest.mark.parametrize("name", ["diabetes_inpatients", "heart_failure_admissions", "hypertension_registry"])
def test_each_shipped_cohort_matches_a_brute_force_reference(spark, region, silver_frames, name):
    spec = region.settings.cohort(name)
    silver = silver_tables(spark, region.settings)
    result = evaluate(spec, io.read(spark, TIMELINE, region.settings.root), silver["encounter"], silver["person"],
                      AS_OF)
    members = result.members.toPandas()
    expected, persons = _reference(name, silver_frames)
    assert len(expected) >= 10 and expected["flags"].map(len).sum() > 0  # preconditions: a cohort, flags raised
    key = ["person_key", "index_time", "encounter_key"]
    got = members.assign(flags=members["flags"].map(list)).sort_values(key).reset_index(drop=True)
    want = expected.sort_values(key).reset_index(drop=True)
    assert got[key].equals(want[key])
    assert got["flags"].tolist() == want["flags"].tolist()
    assert (got.as_of == AS_OF).all() and got.criteria_met.map(list).map(tuple).nunique() == 1
    if "series" in want:  # the HbA1c trajectory: every HbA1c before the as-of day, in time order
        trajectories = got["series"].map(lambda s: s["hba1c"])
        assert trajectories.map(len).tolist() == want["series"].tolist()
        assert all(list(t) == sorted(t, key=lambda p: p["time"]) for t in trajectories)
    steps = result.steps.groupBy().agg(F.collect_list("passed")).first()[0]
    assert [sum(1 for passed in steps if passed[i] > 0) for i in range(len(persons))] == persons


def test_cohort_command_writes_the_cohort_and_its_attrition(spark, region, capsys):
    root = region.settings.root
    assert main(["cohort", "--name", "heart_failure_admissions", "--as-of", AS_OF.isoformat(), "--root", root]) == 0
    out = capsys.readouterr().out
    assert f"cohort heart_failure_admissions (as of {AS_OF})" in out and "heart_failure_in_stay" in out
    attrition = (io.read(spark, COHORT_ATTRITION, root).where("cohort = 'heart_failure_admissions'")
                 .orderBy("step").collect())
    assert [(r.criterion, r.kind) for r in attrition] == [
        ("index event", "index"), ("adult", "inclusion"), ("heart_failure_in_stay", "inclusion")]
    assert attrition[0].persons >= attrition[1].persons >= attrition[2].persons > 0
    assert {r.as_of for r in attrition} == {AS_OF}
    members = io.read(spark, cohort_table("heart_failure_admissions"), root)
    assert members.select(F.countDistinct("person_key")).first()[0] == attrition[2].persons
    assert members.count() == attrition[2].index_events
    assert main(["cohort", "--name", "no_such_cohort", "--root", root]) == 2
    assert "no such cohort" in capsys.readouterr().err


# --- indicators and summary -------------------------------------------------------------------------

def test_indicators_match_counts_by_hand(spark):
    t = dt.datetime
    stays = [  # person, encounter, hospital, department, admit, discharge, disposition
        ("p1", "e1", "H01", "心内科", t(2025, 3, 1, 10), t(2025, 3, 3, 10), "home"),  # 2 days; readmitted (e2)
        ("p1", "e2", "H02", "心内科", t(2025, 3, 4, 8), t(2025, 3, 4, 20), "death"),  # at another hospital; died
        ("p2", "e3", "H01", "心内科", t(2025, 3, 2, 23), t(2025, 3, 3, 0), "home"),  # 1 hour, out at midnight
        ("p3", "e4", "H01", "心内科", t(2025, 3, 3, 9), None, None),  # still in on the as-of day
        ("p4", "e5", "H01", "心内科", t(2025, 3, 3, 9), t(2025, 4, 30, 9), "home"),  # discharged after it: still in
        ("p5", "e6", "H01", "心内科", t(2025, 3, 6, 9), t(2025, 3, 7, 9), "home"),  # admitted after it: unseen
    ]
    encounters = spark.createDataFrame(
        [(p, e, h, d, "inpatient", a, x, s) for p, e, h, d, a, x, s in stays]
        + [("p2", "e7", "H01", "心内科", "outpatient", t(2025, 3, 4, 9), None, None)],  # a visit is no readmission
        "person_key STRING, encounter_key STRING, hospital_id STRING, department STRING, encounter_type STRING, "
        "admit_time TIMESTAMP, discharge_time TIMESTAMP, discharge_disposition STRING")
    as_of, d = dt.date(2025, 3, 5), dt.date
    daily = inpatient_daily(spark, encounters, Beds(default=10, hospitals={"H01": {"心内科": 4}}), as_of)
    expected = [  # admissions, discharges, deaths, midnight census, beds, occupancy, LOS mean and median,
        # alive discharges, readmitted, readmission rate, follow-up complete, in-hospital mortality
        ("H01", "心内科", d(2025, 3, 1), 1, 0, 0, 1, 4, 0.25, None, None, 0, 0, None, False, None),
        ("H01", "心内科", d(2025, 3, 2), 1, 0, 0, 2, 4, 0.5, None, None, 0, 0, None, False, None),
        ("H01", "心内科", d(2025, 3, 3), 2, 2, 0, 2, 4, 0.5, (2 + 1 / 24) / 2, (2 + 1 / 24) / 2, 2, 1, 0.5, False,
         0.0),
        ("H01", "心内科", d(2025, 3, 4), 0, 0, 0, 2, 4, 0.5, None, None, 0, 0, None, False, None),
        ("H02", "心内科", d(2025, 3, 4), 1, 1, 1, 0, 10, 0.0, 0.5, 0.5, 0, 0, None, False, 1.0),
    ]
    want = spark.createDataFrame([(*row, as_of) for row in expected], INDICATOR_INPATIENT_DAILY.schema)
    assert_approx_df_equality(daily.orderBy("hospital_id", "day"), want.orderBy("hospital_id", "day"), 1e-9,
                              ignore_nullable=True)


def test_patient_summary_counts_each_persons_encounters_and_latest_labs(spark, region):
    root = region.settings.root
    summary = io.read(spark, PATIENT_SUMMARY, root)
    encounters = io.read(spark, ENCOUNTER, root)
    people = io.read(spark, PERSON, root).select("person_key").union(encounters.select("person_key"))
    assert summary.count() == people.where(F.col("person_key").isNotNull()).distinct().count()
    travelled = (encounters.groupBy("person_key")
                 .agg(F.countDistinct("hospital_id").alias("n"), F.count("*").alias("c"))
                 .where("n > 1").orderBy("person_key").first())
    assert travelled is not None  # precondition: a person seen at two hospitals
    row = summary.where(F.col("person_key") == travelled.person_key).first()
    assert len(row.hospitals) == travelled.n and row.encounters == travelled.c
    assert row.inpatient_stays + row.outpatient_visits + row.emergency_visits <= row.encounters
    assert summary.agg(F.sum("encounters")).first()[0] == encounters.where(F.col("person_key").isNotNull()).count()
    hba1c = (io.read(spark, LAB_RESULT, root).where((F.col("loinc_code") == "4548-4") & F.col("unit_ok"))
             .groupBy("person_key").agg(F.max_by("value", "result_time").alias("v"), F.max("result_time").alias("t"))
             .orderBy("person_key").first())
    latest = summary.where(F.col("person_key") == hba1c.person_key).first().latest_labs["LOINC//4548-4"]
    assert (latest.time, latest.value, latest.unit) == (hba1c.t, hba1c.v, "%")


# --- MEDS -------------------------------------------------------------------------------------------

def test_meds_export_passes_the_meds_schemas_sorted_by_subject_and_time(spark, region, tmp_path):
    out = tmp_path / "meds"
    result = export_meds(spark, region.settings, str(out))
    timeline = io.read(spark, TIMELINE, region.settings.root)
    subjects = timeline.select("person_key").distinct().count()
    shards = sorted((out / meds.data_subdirectory).glob("*.parquet"))
    assert shards and result.subjects == subjects
    events, last_subject = 0, None
    for shard in shards:
        table = pq.read_table(shard)
        meds.DataSchema.validate(table)
        frame = table.to_pandas()
        assert frame.subject_id.is_monotonic_increasing
        assert last_subject is None or frame.subject_id.iloc[0] > last_subject  # shards hold disjoint ranges
        for _, rows in frame.groupby("subject_id"):
            times = rows.time.tolist()
            assert pd.isna(times[0]) or not rows.time.isna().any()  # static rows first
            assert rows.time.dropna().is_monotonic_increasing
        last_subject, events = frame.subject_id.iloc[-1], events + len(frame)
    sexed = frame.code.str.startswith(SEX_PREFIX).sum()
    assert sexed > 0 and events >= timeline.count()
    codes = pq.read_table(out / meds.code_metadata_filepath)
    meds.CodeMetadataSchema.validate(codes)
    described = dict(zip(codes.column("code").to_pylist(), codes.column("description").to_pylist(), strict=True))
    assert described["LOINC//4548-4"] and described["ICD10//E11.9"] == "2型糖尿病"
    splits = pq.read_table(out / meds.subject_splits_filepath)
    meds.SubjectSplitSchema.validate(splits)
    frame = splits.to_pandas()
    assert frame.subject_id.is_unique and len(frame) == subjects
    assert set(frame.split) == {meds.train_split, meds.tuning_split, meds.held_out_split}
    dataset = json.loads((out / meds.dataset_metadata_filepath).read_text())
    meds.DatasetMetadataSchema.validate(dataset)
    assert dataset["dataset_version"] == str(io.latest_version(spark, TIMELINE, region.settings.root))
    with pytest.raises(Exception, match="not empty"):
        export_meds(spark, region.settings, str(out))


# --- increments -------------------------------------------------------------------------------------

def _assert_same_rows(actual, expected, table: str) -> None:
    """Equal as multisets of rows, compared by Spark (maps as entry arrays in key order: maps do not compare)."""
    def comparable(frame):
        for field in frame.schema.fields:
            if isinstance(field.dataType, T.MapType):
                frame = frame.withColumn(field.name, F.array_sort(F.map_entries(field.name)))
        return frame

    actual, expected = comparable(actual), comparable(expected).select(*actual.columns)
    missing, extra = expected.exceptAll(actual), actual.exceptAll(expected)
    assert missing.isEmpty() and extra.isEmpty(), (
        f"{table}: rows only in the full rebuild {missing.limit(3).collect()}, only in the increment "
        f"{extra.limit(3).collect()}")


def test_an_increment_rebuilds_only_touched_persons_and_days_and_equals_a_full_rebuild(spark, region, tmp_path):
    settings = region.settings.model_copy(update={"root": str(tmp_path / "root")})
    root = settings.root
    gold = [TIMELINE, PATIENT_SUMMARY, COHORT_STEPS, COHORT_ATTRITION, INDICATOR_INPATIENT_DAILY, INDICATOR_REGISTRY,
            *(cohort_table(name) for name in settings.cohorts),
            *(features_table(t.name, t.features) for t in settings.tasks.values())]
    for ref in (*SOURCE_TABLES, *gold):  # this region's silver, and the gold built from it, under a new root
        spark.sql(f"CREATE TABLE delta.`{ref.path(root)}` SHALLOW CLONE delta.`{ref.path(region.settings.root)}`")
    for ref in SOURCE_TABLES:  # every table made by this session has the feed; a reused older region may not
        properties = spark.sql(f"DESCRIBE DETAIL delta.`{ref.path(root)}`").first().properties
        if properties.get("delta.enableChangeDataFeed") != "true":
            spark.sql(f"ALTER TABLE delta.`{ref.path(root)}` SET TBLPROPERTIES (delta.enableChangeDataFeed = true)")
    previous = {ref.qualified: io.latest_version(spark, ref, root) for ref in SOURCE_TABLES}

    # day 2 in silver: a cancelled lab, a corrected diagnosis, a new stay, and two persons merged by the index
    enc = io.read(spark, ENCOUNTER, root)
    stay = enc.where("encounter_type = 'inpatient' AND discharge_time IS NOT NULL").orderBy("encounter_key").first()
    lab = io.read(spark, LAB_RESULT, root).where(F.col("person_key") != stay.person_key).orderBy("lab_key").first()
    dx = (io.read(spark, DIAGNOSIS, root).where(~F.col("person_key").isin(stay.person_key, lab.person_key))
          .orderBy("diagnosis_key").first())
    merged_from, merged_into = [r.person_key for r in io.read(spark, PERSON, root)
                                .where(~F.col("person_key").isin(stay.person_key, lab.person_key, dx.person_key))
                                .select("person_key").distinct().orderBy("person_key").limit(2).collect()]
    spark.sql(f"DELETE FROM delta.`{LAB_RESULT.path(root)}` WHERE lab_key = '{lab.lab_key}'")
    spark.sql(f"UPDATE delta.`{DIAGNOSIS.path(root)}` SET icd10_code = 'I50.9', is_mapped = true "
              f"WHERE diagnosis_key = '{dx.diagnosis_key}'")
    new_stay = (enc.where(F.col("encounter_key") == stay.encounter_key)
                .withColumn("encounter_key", F.lit("new-stay"))
                .withColumn("admit_time", F.col("discharge_time") + F.expr("INTERVAL 10 DAYS"))
                .withColumn("discharge_time", F.col("discharge_time") + F.expr("INTERVAL 12 DAYS")))
    io.append(spark, new_stay, ENCOUNTER, root)
    for ref in SOURCE_TABLES:
        spark.sql(f"UPDATE delta.`{ref.path(root)}` SET person_key = '{merged_into}' "
                  f"WHERE person_key = '{merged_from}'")

    result = build(spark, settings, previous)
    assert result.mode == "increment", result.reason
    assert result.persons == 5  # lab, diagnosis, new stay, and both sides of the merge
    assert 0 < result.days < io.read(spark, INDICATOR_INPATIENT_DAILY, root).select("day").distinct().count()
    increment = {ref.qualified: io.latest_version(spark, ref, root) for ref in gold}
    build_full(spark, settings, "the test's reference")
    for ref in gold:
        full, incremental = io.read(spark, ref, root), io.read(spark, ref, root, version=increment[ref.qualified])
        # when it ran, and the timeline version features were read from, differ by construction
        full, incremental = (f.drop("built_at", "source_versions") for f in (full, incremental))
        if ref.name.startswith("features_"):  # means and slopes are sums of doubles, in the order files are read
            assert_approx_df_equality(incremental.orderBy(*ref.keys), full.orderBy(*ref.keys), 1e-6,
                                      allow_nan_equality=True)
            continue
        _assert_same_rows(incremental, full, ref.qualified)
    assert io.read(spark, TIMELINE, root).where(F.col("person_key") == merged_from).count() == 0
    assert io.read(spark, TIMELINE, root).where(F.col("source_key") == "new-stay").count() == 2
