"""Silver: bronze -> the region's standard clinical model, merged by key so re-runs add nothing.

Each transform is DataFrame-in, DataFrame-out and ends with the silver table's `select`; the stage
function at the bottom wires them to Delta. Direct identifiers go only to `vault.identity`,
encrypted with AES-GCM; silver carries keyed-hash pseudonyms.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lakehouse import io
from lakehouse.catalog import BRONZE, DIAGNOSIS, ENCOUNTER, IDENTITY, LAB_RESULT, PERSON, TableRef
from lakehouse.config import Settings
from lakehouse.io import Written
from lakehouse.silver import vocab
from lakehouse.silver.standardize import (
    clean_text,
    keyed_hash,
    national_id_is_valid,
    normalize_icd10,
    parse_timestamp,
)

UPDATE_WHEN_NEWER = "t.updated_at IS NULL OR s.updated_at > t.updated_at"


def resolve_references(bronze: DataFrame) -> DataFrame:
    """FHIR literal references ("Patient/0500…", "Encounter/0500…") become the source ids they point to."""
    for column in ("mrn", "encounter_id"):
        if column in bronze.columns:
            bronze = bronze.withColumn(column, F.regexp_replace(column, r"^(Patient|Encounter)/", ""))
    return bronze


def latest_per_key(df: DataFrame, keys: list[str], updated: Column) -> DataFrame:
    """Collapse duplicates and resends: the latest update wins, then the latest ingest, then file line."""
    order = Window.partitionBy(*keys).orderBy(updated.desc_nulls_last(), F.col("_ingested_at").desc(),
                                              F.col("_source_file").desc(), F.col("_source_line").desc())
    return df.withColumn("_rank", F.row_number().over(order)).where("_rank = 1").drop("_rank")


def _formats(settings: Settings, entity: str, kind: str = "timestamp_format") -> dict[str, str]:
    return {h: getattr(c.entities[entity], kind) for h, c in settings.sources.items() if entity in c.entities}


def _lineage() -> list[Column]:
    return [F.col("_source_file").alias("source_file"), F.col("_source_line").alias("source_line"),
            F.col("_batch_id").alias("batch_id")]


def patient_key(key: bytes, hospital: Column, mrn: Column) -> Column:
    return keyed_hash(key, F.lit("patient"), hospital, clean_text(mrn))


@dataclass(frozen=True)
class Prepared:
    """A bronze entity reduced to its latest version per source key and joined to its person."""

    rows: DataFrame
    formats: dict[str, str]
    updated: Column
    own_key: Column
    person_key: Column

    def timestamp(self, column: str) -> Column:
        return parse_timestamp(F.col(column), F.col("_hospital_id"), self.formats).alias(column)


def prepare(bronze: DataFrame, entity: str, source_id: str, persons: DataFrame, key: bytes,
            settings: Settings) -> Prepared:
    formats = _formats(settings, entity)
    updated = parse_timestamp(F.col("updated_at"), F.col("_hospital_id"), formats)
    own_key = patient_key(key, F.col("_hospital_id"), F.col("mrn"))
    people = persons.select(F.col("patient_key").alias("_pk"), F.col("person_key"))
    rows = latest_per_key(bronze, ["_hospital_id", source_id], updated).join(people, own_key == F.col("_pk"), "left")
    return Prepared(rows, formats, updated, own_key, F.coalesce(F.col("person_key"), own_key))


def encounter_key(key: bytes) -> Column:
    return keyed_hash(key, F.lit("encounter"), F.col("_hospital_id"), F.col("encounter_id")).alias("encounter_key")


def latest_patients(bronze: DataFrame, settings: Settings) -> DataFrame:
    """The latest version of every (hospital, MRN), with its parsed update time as `_updated`.

    Computed once per refine and shared by silver.person and vault.identity."""
    updated = parse_timestamp(F.col("updated_at"), F.col("_hospital_id"), _formats(settings, "patient"))
    return latest_per_key(bronze, ["_hospital_id", "mrn"], updated).withColumn("_updated", updated)


def standardize_persons(latest: DataFrame, sex_vocab: DataFrame, key: bytes, settings: Settings) -> DataFrame:
    """One row per hospital patient record (from latest_patients). person_key: the valid national ID when
    present (the deterministic EMPI rule), else the record's own key; probabilistic linkage comes with EMPI."""
    birth = parse_timestamp(F.col("birth_date"), F.col("_hospital_id"), _formats(settings, "patient", "date_format"))
    valid_id = national_id_is_valid(F.col("national_id"))
    own_key = patient_key(key, F.col("_hospital_id"), F.col("mrn"))
    return (latest
            .join(sex_vocab, (F.col("_hospital_id") == sex_vocab.hospital_id)
                  & (clean_text(latest.sex) == sex_vocab.local_value), "left")
            .select(own_key.alias("patient_key"),
                    F.when(valid_id, keyed_hash(key, F.lit("person"), F.upper(clean_text(F.col("national_id")))))
                    .otherwise(own_key).alias("person_key"),
                    F.col("_hospital_id").alias("hospital_id"),
                    F.coalesce(F.col("sex_vocab.sex"), F.lit("unknown")).alias("sex"),
                    F.year(birth).alias("birth_year"),
                    valid_id.alias("has_national_id"),
                    F.col("_updated").alias("updated_at"),
                    *_lineage()))


def identity_rows(latest: DataFrame, key: bytes, vault_key: bytes) -> DataFrame:
    """Direct identifiers of latest_patients, encrypted column by column with AES-GCM (random IV per value)."""
    secret = F.lit(vault_key)

    def enc(column: str) -> Column:
        return F.aes_encrypt(clean_text(F.col(column)), secret, F.lit("GCM")).alias(f"{column}_enc")

    return latest.select(patient_key(key, F.col("_hospital_id"), F.col("mrn")).alias("patient_key"),
                         F.col("_hospital_id").alias("hospital_id"),
                         enc("mrn"), enc("name"), enc("national_id"), enc("birth_date"), enc("phone"), enc("address"),
                         F.col("_updated").alias("updated_at"))


def standardize_encounters(bronze: DataFrame, persons: DataFrame, types: DataFrame, key: bytes,
                           settings: Settings) -> DataFrame:
    p = prepare(bronze, "encounter", "encounter_id", persons, key, settings)
    local_type = clean_text(p.rows.encounter_type)
    return (p.rows
            .join(types, (F.col("_hospital_id") == types.hospital_id) & (local_type == types.local_value), "left")
            .select(encounter_key(key),
                    F.col("_hospital_id").alias("hospital_id"),
                    clean_text(F.col("encounter_id")).alias("source_encounter_id"),
                    p.own_key.alias("patient_key"),
                    p.person_key.alias("person_key"),
                    F.coalesce(types.encounter_type, F.lit("unmapped")).alias("encounter_type"),
                    local_type.alias("source_encounter_type"),
                    clean_text(F.col("department")).alias("department"),
                    p.timestamp("admit_time"),
                    p.timestamp("discharge_time"),
                    clean_text(F.col("discharge_disposition")).alias("discharge_disposition"),
                    p.updated.alias("updated_at"),
                    *_lineage()))


def standardize_diagnoses(bronze: DataFrame, persons: DataFrame, key: bytes, settings: Settings) -> DataFrame:
    p = prepare(bronze, "diagnosis", "diagnosis_id", persons, key, settings)
    icd = normalize_icd10(F.col("icd_code"))
    return p.rows.select(
        keyed_hash(key, F.lit("diagnosis"), F.col("_hospital_id"), F.col("diagnosis_id")).alias("diagnosis_key"),
        F.col("_hospital_id").alias("hospital_id"),
        encounter_key(key),
        p.person_key.alias("person_key"),
        icd.alias("icd10_code"),
        clean_text(F.col("icd_code")).alias("source_code"),
        clean_text(F.col("diagnosis_name")).alias("source_name"),
        icd.isNotNull().alias("is_mapped"),
        p.timestamp("diagnosis_time"),
        p.updated.alias("updated_at"),
        *_lineage())


def standardize_labs(bronze: DataFrame, persons: DataFrame, lab_codes: DataFrame, units: DataFrame, key: bytes,
                     settings: Settings, vocab_version: str) -> DataFrame:
    """Local lab codes -> LOINC, values converted to the canonical unit; unknown codes or units are
    kept with their source values and flagged (is_mapped / unit_ok false, value null), never guessed."""
    p = prepare(bronze, "lab_result", "result_id", persons, key, settings)
    source_unit = clean_text(F.col("unit"))
    converted = F.try_multiply(F.col("value").try_cast("double"), F.col("factor"))
    return (p.rows
            .join(lab_codes, (F.col("_hospital_id") == lab_codes.hospital_id)
                  & (clean_text(F.col("test_code")) == lab_codes.local_code), "left")
            .join(units, (lab_codes.loinc_code == units.loinc_code) & (source_unit == units.source_unit), "left")
            .select(keyed_hash(key, F.lit("lab"), F.col("_hospital_id"), F.col("result_id")).alias("lab_key"),
                    F.col("_hospital_id").alias("hospital_id"),
                    encounter_key(key),
                    p.person_key.alias("person_key"),
                    lab_codes.loinc_code.alias("loinc_code"),
                    clean_text(F.col("test_code")).alias("source_code"),
                    clean_text(F.col("test_name")).alias("source_name"),
                    clean_text(F.col("value")).alias("source_value"),
                    source_unit.alias("source_unit"),
                    F.round(converted, 4).alias("value"),
                    units.canonical_unit.alias("unit"),
                    lab_codes.loinc_code.isNotNull().alias("is_mapped"),
                    units.factor.isNotNull().alias("unit_ok"),
                    p.timestamp("result_time"),
                    F.lit(vocab_version).alias("vocab_version"),
                    p.updated.alias("updated_at"),
                    *_lineage()))


OUTPUTS = (PERSON, IDENTITY, ENCOUNTER, DIAGNOSIS, LAB_RESULT)


def refine_inputs(spark: SparkSession, settings: Settings) -> list[Written]:
    return [io.describe(spark, ref, settings.root) for ref in BRONZE.values() if io.exists(spark, ref, settings.root)]


def refine(spark: SparkSession, settings: Settings, key: bytes, vault_key: bytes) -> list[Written]:
    """Rebuild silver from bronze and merge it in by key; return the tables written."""
    root = settings.root
    version = vocab.version(settings.vocab_dir)
    bronze = {e: resolve_references(io.read_or_empty(spark, ref, root)) for e, ref in BRONZE.items()}
    patients = latest_patients(bronze["patient"], settings).persist()  # read by two merges
    sex = vocab.load(spark, settings.vocab_dir, "sex").alias("sex_vocab")
    outputs = [io.merge(spark, standardize_persons(patients, sex, key, settings), PERSON, root,
                        update_when=UPDATE_WHEN_NEWER),
               io.merge(spark, identity_rows(patients, key, vault_key), IDENTITY, root, update_when=UPDATE_WHEN_NEWER)]
    patients.unpersist()
    people = io.read(spark, PERSON, root)
    tables: list[tuple[DataFrame, TableRef]] = [
        (standardize_encounters(bronze["encounter"], people, vocab.load(spark, settings.vocab_dir, "encounter_types"),
                                key, settings), ENCOUNTER),
        (standardize_diagnoses(bronze["diagnosis"], people, key, settings), DIAGNOSIS),
        (standardize_labs(bronze["lab_result"], people, vocab.load(spark, settings.vocab_dir, "lab_codes"),
                          vocab.load(spark, settings.vocab_dir, "units"), key, settings, version), LAB_RESULT),
    ]
    for df, ref in tables:
        outputs.append(io.merge(spark, df, ref, root, update_when=UPDATE_WHEN_NEWER))
    return outputs
