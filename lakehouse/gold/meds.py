"""Export the patient timeline as a MEDS dataset (Medical Event Data Standard, schema of the `meds` package).

    <out>/data/part-*.parquet              subject_id, time, code, numeric_value, text_value (+ unit, hospital_id)
                                           shards hold disjoint subject ranges, each sorted by subject and time
    <out>/metadata/codes.parquet           code, description, parent_codes (from conf/vocab)
    <out>/metadata/subject_splits.parquet  subject_id, split (train / tuning / held_out by a hash of the person)
    <out>/metadata/dataset.json            name, version (the timeline's Delta version), ETL, MEDS version

The shards are written by the executors; the metadata files are small (codes are bounded by the
vocabularies; the splits file is written by one task and renamed). `out` is a local folder.
"""

from __future__ import annotations

import csv
import datetime as dt
import importlib.metadata
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import meds
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import access, io, progress
from lakehouse.catalog import PERSON, TIMELINE
from lakehouse.config import Settings
from lakehouse.errors import LakehouseError
from lakehouse.gold.timeline import file_count, person_attributes

SPLITS = ((meds.train_split, 80), (meds.tuning_split, 10), (meds.held_out_split, 10))  # percent of persons
SEX_PREFIX = "SEX//"  # a static measurement (time null), first in each subject's rows
# vocabulary file -> (code system, code column, description column)
VOCABULARIES = {"icd10.csv": ("ICD10", "code", "name"), "icd9cm3.csv": ("ICD9CM3", "code", "name"),
                "lab_codes.csv": ("LOINC", "loinc_code", "loinc_name"),
                "vital_codes.csv": ("LOINC", "loinc_code", "loinc_name"),
                "drug_codes.csv": ("ATC", "atc_code", "atc_name")}
FIXED_CODES = {meds.birth_code: "birth (1 January of the de-identified birth year)",
               meds.death_code: "death in hospital", "ADMISSION//INPATIENT": "inpatient admission",
               "DISCHARGE//INPATIENT": "inpatient discharge"}


@dataclass(frozen=True)
class MedsExport:
    out: str
    timeline_version: int
    subjects: int
    events: int
    shards: int
    codes: int


def subject_id(person_key: Column) -> Column:
    """A 60-bit integer from the person key (a hex HMAC): MEDS subjects are int64."""
    return F.conv(F.substring(person_key, 1, 15), 16, 10).cast("bigint")


def meds_events(timeline: DataFrame, persons: DataFrame) -> DataFrame:
    sex = (person_attributes(persons).where(F.col("sex").isNotNull())
           .select("person_key", F.lit(None).cast("timestamp").alias("time"),
                   F.concat(F.lit(SEX_PREFIX), F.col("sex")).alias("code"),
                   F.lit(None).cast("double").alias("numeric_value"), F.lit(None).cast("string").alias("text_value"),
                   F.lit(None).cast("string").alias("unit"), F.lit(None).cast("string").alias("hospital_id")))
    events = timeline.select("person_key", "time", "code", "numeric_value", "text_value", "unit", "hospital_id")
    return (events.unionByName(sex.join(events.select("person_key").distinct(), "person_key"))
            .select(subject_id(F.col("person_key")).alias("subject_id"),
                    F.col("time").cast("timestamp_ntz").alias("time"), "code",
                    F.col("numeric_value").cast("float").alias("numeric_value"), "text_value", "unit", "hospital_id"))


def conform_shard(path: str) -> None:
    """Rewrite one shard with MEDS's exact Arrow types (text_value is large_string, which Spark cannot write);
    runs on an executor, one shard per task."""
    table = meds.DataSchema.align(pq.read_table(path).replace_schema_metadata(None))
    meds.DataSchema.validate(table)
    pq.write_table(table, path)


def splits(subjects: DataFrame) -> DataFrame:
    bucket = F.pmod(F.xxhash64("subject_id"), F.lit(100))
    split, upper = None, 0
    for name, percent in SPLITS:
        upper += percent
        split = (F.when(bucket < upper, F.lit(name)) if split is None else split.when(bucket < upper, F.lit(name)))
    return subjects.select("subject_id", split.alias("split"))


def code_metadata(vocab_dir: Path, codes: list[str]) -> pa.Table:
    described = dict(FIXED_CODES)
    for file, (system, code_column, name_column) in VOCABULARIES.items():
        with (vocab_dir / file).open(encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                described.setdefault(f"{system}//{row[code_column]}", row[name_column])
    rows = []
    for code in sorted(codes):
        system, _, value = code.partition("//")
        parents = [f"{system}//{value.split('.')[0]}"] if system in ("ICD10", "ICD9CM3") and "." in value else []
        rows.append({"code": code, "description": described.get(code), "parent_codes": parents})
    return pa.Table.from_pylist(rows, schema=meds.CodeMetadataSchema.schema())


def export_meds(spark: SparkSession, settings: Settings, out: str) -> MedsExport:
    target = Path(out)
    if target.exists() and any(target.iterdir()):
        raise LakehouseError(f"{out} is not empty: MEDS export writes a fresh folder")
    version = io.latest_version(spark, TIMELINE, settings.root)
    if version is None:
        raise LakehouseError("gold.patient_timeline does not exist yet: run `lakehouse build` first")
    reader = access.Reader(spark, settings, access.current(settings), f"MEDS export to {out}", writer_kind="meds")
    timeline = reader.table(TIMELINE.qualified, version=version)
    events = meds_events(timeline, reader.table(PERSON.qualified, columns=["person_key", "sex", "birth_year"]))
    subjects = timeline.select("person_key").distinct().select("person_key", subject_id(F.col("person_key"))
                                                               .alias("subject_id"))
    check = subjects.agg(F.count(F.lit(1)).alias("persons"), F.countDistinct("subject_id").alias("ids")).first()
    if check["persons"] != check["ids"]:
        raise LakehouseError(f"{check['persons'] - check['ids']} person keys share a MEDS subject_id")
    rows = io.describe(spark, TIMELINE, settings.root).rows
    shards = file_count(rows, settings.main.gold.timeline_rows_per_file)
    progress.step("write", f"{check['persons']} subjects", 0, shards, "shards", rows)
    (events.repartitionByRange(shards, "subject_id")
     .sortWithinPartitions(F.col("subject_id"), F.col("time").asc_nulls_first(), F.col("code"))
     .write.mode("errorifexists").parquet(str(target / meds.data_subdirectory)))
    (target / meds.data_subdirectory / "_SUCCESS").unlink(missing_ok=True)
    shard_files = sorted(str(f) for f in (target / meds.data_subdirectory).glob("*.parquet"))
    progress.step("conform", "MEDS Arrow types", 0, len(shard_files), "shards", rows)
    spark.sparkContext.parallelize(shard_files, len(shard_files)).foreach(conform_shard)
    progress.step("metadata", "codes, splits, dataset", len(shard_files), len(shard_files), "shards", rows)
    metadata = target / "metadata"
    metadata.mkdir(parents=True, exist_ok=True)
    codes = [r[0] for r in events.select("code").distinct().collect()]  # bounded by the vocabularies
    pq.write_table(code_metadata(settings.vocab_dir, codes), target / meds.code_metadata_filepath)
    staging = metadata / "_splits"
    splits(subjects).coalesce(1).write.mode("overwrite").parquet(str(staging))
    (part,) = staging.glob("part-*.parquet")
    part.rename(target / meds.subject_splits_filepath)
    shutil.rmtree(staging)
    dataset = {"dataset_name": settings.main.gold.meds_dataset_name, "dataset_version": str(version),
               "etl_name": "lakehouse", "etl_version": importlib.metadata.version("lakehouse"),
               "meds_version": importlib.metadata.version("meds"),
               "created_at": dt.datetime.now(dt.UTC).isoformat(), "site_id_columns": ["hospital_id"],
               "other_extension_columns": ["unit"]}
    (target / meds.dataset_metadata_filepath).write_text(json.dumps(dataset, indent=2), encoding="utf-8")
    return MedsExport(str(target), version, check["persons"], rows, shards, len(codes))
