"""Silver: bronze -> the region's standard clinical model, merged by key so re-runs add nothing.

Each transform is DataFrame-in, DataFrame-out and ends with the silver table's `select`; the stage
function at the bottom wires them to Delta. Direct identifiers go only to `vault.identity`,
encrypted with AES-GCM; silver carries keyed-hash pseudonyms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import reduce

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakehouse import io
from lakehouse.catalog import (
    BRONZE,
    DIAGNOSIS,
    DQ_RESULT,
    ENCOUNTER,
    IDENTITY,
    IMAGING_REPORT,
    INGEST_LEDGER,
    LAB_RESULT,
    MEDICATION,
    NOTE,
    PERSON,
    PERSON_LINK,
    PROCEDURE,
    REFINE_STATE,
    REFINE_VOCAB,
    SILVER,
    VITAL_SIGN,
    TableRef,
)
from lakehouse.config import Settings
from lakehouse.io import Written
from lakehouse.runlog import commit_note
from lakehouse.silver import quality, remap, vault, vocab
from lakehouse.silver.standardize import (
    RECORD_KEY,
    clean_text,
    is_cancelled,
    keyed_hash,
    mask_identifiers,
    national_id_is_valid,
    normalize_icd9cm3,
    normalize_icd10,
    parse_timestamp,
    plausible_times,
    record_key,
)

# the bronze column holding each event entity's source record id (its key, with the hospital)
SOURCE_ID = {"encounter": "encounter_id", "diagnosis": "diagnosis_id", "procedure": "procedure_id",
             "lab_result": "result_id", "vital_sign": "vital_id", "medication": "order_id",
             "imaging_report": "report_id", "note": "note_id"}
INCREMENT_UPDATE_WHEN = "t.updated_at IS NULL OR s.updated_at >= t.updated_at"  # a later batch wins a tie
CANCELLED = "_cancelled"  # the latest version of the record cancels it


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


def person_key(key: bytes, person_id: Column) -> Column:
    """The pseudonym research data carries: an HMAC of the regional person id (see silver.person_link)."""
    return keyed_hash(key, F.lit("person"), person_id)


def unlinked_person_key(key: bytes, own_key: Column) -> Column:
    """A record the linker has not seen yet is its own person, whose id is its patient_key (`lakehouse link`
    keeps that id when the record stays alone, so most new records need no update after linking)."""
    return person_key(key, own_key)


@dataclass(frozen=True)
class Prepared:
    """A bronze entity reduced to its latest version per source key and joined to its person."""

    rows: DataFrame
    formats: dict[str, str]
    updated: Column
    own_key: Column
    person_key: Column
    cancelled: Column

    def timestamp(self, column: str) -> Column:
        return parse_timestamp(F.col(column), F.col("_hospital_id"), self.formats).alias(column)


def prepare(bronze: DataFrame, entity: str, persons: DataFrame, key: bytes, settings: Settings) -> Prepared:
    formats = _formats(settings, entity)
    source_id = SOURCE_ID[entity]
    updated = parse_timestamp(F.col("updated_at"), F.col("_hospital_id"), formats)
    own_key = patient_key(key, F.col("_hospital_id"), F.col("mrn"))
    people = persons.select(F.col("patient_key").alias("_pk"), F.col("person_key"))
    rows = (latest_per_key(bronze.withColumn(RECORD_KEY, record_key(source_id)), ["_hospital_id", RECORD_KEY], updated)
            .withColumn("source_id", clean_text(F.col(source_id)))
            .join(people, own_key == F.col("_pk"), "left"))
    cancelled = (is_cancelled(F.col("status"), F.col("_hospital_id"), vocab.cancelled_values(settings.vocab_dir))
                 if "status" in bronze.columns else F.lit(False))
    return Prepared(rows, formats, updated, own_key, F.coalesce(F.col("person_key"), unlinked_person_key(key, own_key)),
                    cancelled)


def encounter_key(key: bytes) -> Column:
    """The key of the encounter a row refers to (equal to that encounter's own key)."""
    return keyed_hash(key, F.lit("encounter"), F.col("_hospital_id"), clean_text(F.col("encounter_id"))).alias(
        "encounter_key")


def latest_patients(bronze: DataFrame, settings: Settings) -> DataFrame:
    """The latest version of every (hospital, MRN), with its parsed update time as `_updated`.

    Computed once per refine and shared by silver.person and vault.identity."""
    updated = parse_timestamp(F.col("updated_at"), F.col("_hospital_id"), _formats(settings, "patient"))
    keyed = bronze.withColumn(RECORD_KEY, record_key("mrn"))
    return latest_per_key(keyed, ["_hospital_id", RECORD_KEY], updated).withColumn("_updated", updated)


def birth_date(settings: Settings) -> Column:
    return parse_timestamp(F.col("birth_date"), F.col("_hospital_id"), _formats(settings, "patient", "date_format"))


TOP_AGE = 90  # ages over 89 are "90+" (HIPAA Safe Harbor): their birth year is top-coded too


def deidentified_age(birth: Column, updated: Column) -> list[Column]:
    """birth_year (top-coded: nobody looks older than 90) and a five-year age band ("90+" above 89), both as of
    `updated`, the record's last update. Silver holds no birth date, so an age "as of today" could not be kept
    current in rows an increment does not rewrite (they would keep the age of the day they were written, and an
    increment would disagree with a full pass): an age as of the record's own update time depends on the
    record alone. Without an update time there is no age band, and the birth year is top-coded as of today."""
    at = F.to_date(updated)
    age = F.floor(F.months_between(at, F.to_date(birth)) / 12)
    band = F.floor(age / 5) * 5
    top_coded = F.greatest(F.year(birth), F.year(F.coalesce(at, F.current_date())) - TOP_AGE)  # skips a null birth
    return [F.when(birth.isNotNull(), top_coded).alias("birth_year"),
            F.when(age >= TOP_AGE, F.lit(f"{TOP_AGE}+"))
            .when(age >= 0, F.concat(band.cast("int"), F.lit("-"), (band + 4).cast("int"))).alias("age_band")]


def standardize_persons(latest: DataFrame, sex_vocab: DataFrame, links: DataFrame, key: bytes,
                        settings: Settings) -> DataFrame:
    """One row per hospital patient record (from latest_patients). person_key: the person `lakehouse link`
    gave the record (silver.person_link), else the record's own person until the next link run."""
    latest = plausible_times(latest.withColumn("_birth", birth_date(settings)), ["_birth"])
    birth = F.col("_birth")
    valid_id = national_id_is_valid(F.col("national_id"))
    own_key = patient_key(key, F.col("_hospital_id"), F.col(RECORD_KEY))
    linked = links.select(F.col("patient_key").alias("_linked_pk"), F.col("person_key").alias("_linked"))
    return (latest
            .join(sex_vocab, (F.col("_hospital_id") == sex_vocab.hospital_id)
                  & (clean_text(latest.sex) == sex_vocab.local_value), "left")
            .join(linked, own_key == F.col("_linked_pk"), "left")
            .select(own_key.alias("patient_key"),
                    F.coalesce(F.col("_linked"), unlinked_person_key(key, own_key)).alias("person_key"),
                    F.col("_hospital_id").alias("hospital_id"),
                    F.coalesce(F.col("sex_vocab.sex"), F.lit("unknown")).alias("sex"),
                    *deidentified_age(birth, F.col("_updated")),
                    valid_id.alias("has_national_id"),
                    F.col("_updated").alias("updated_at"),
                    *_lineage(),
                    clean_text(F.col("mrn")).isNotNull().alias("has_mrn"), F.lit(False).alias(CANCELLED)))


def identity_rows(latest: DataFrame, key: bytes, settings: Settings) -> DataFrame:
    """Direct identifiers of latest_patients in plaintext, cleaned (birth date as yyyy-MM-dd, national ID in
    upper case, the phone's digits): the input of `vault.encrypted`, never written as is."""
    latest = plausible_times(latest.withColumn("_birth", birth_date(settings)), ["_birth"])
    return latest.select(patient_key(key, F.col("_hospital_id"), F.col(RECORD_KEY)).alias("patient_key"),
                         F.col("_hospital_id").alias("hospital_id"),
                         clean_text(F.col("mrn")).alias("mrn"), clean_text(F.col("name")).alias("name"),
                         F.upper(clean_text(F.col("national_id"))).alias("national_id"),
                         F.date_format("_birth", "yyyy-MM-dd").alias("birth_date"),
                         F.nullif(F.regexp_replace(clean_text(F.col("phone")), r"[^0-9]", ""), F.lit(""))
                         .alias("phone"),
                         clean_text(F.col("address")).alias("address"),
                         F.col("_updated").alias("updated_at"))


def standardize_encounters(bronze: DataFrame, persons: DataFrame, types: DataFrame, key: bytes,
                           settings: Settings) -> DataFrame:
    p = prepare(bronze, "encounter", persons, key, settings)
    local_type = clean_text(p.rows.encounter_type)
    return (p.rows
            .join(types, (F.col("_hospital_id") == types.hospital_id) & (local_type == types.local_value), "left")
            .select(keyed_hash(key, F.lit("encounter"), F.col("_hospital_id"), F.col(RECORD_KEY))
                    .alias("encounter_key"),
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
                    *_tail(p)))


def standardize_diagnoses(bronze: DataFrame, persons: DataFrame, icd10: DataFrame, key: bytes,
                          settings: Settings, vocab_version: str) -> DataFrame:
    """ICD-10 normalized (dot, case, extension digits); a missing code is looked up by the diagnosis's
    Chinese name. `is_mapped`: the code is in the region's ICD-10 list (conf/vocab/icd10.csv)."""
    p = prepare(bronze, "diagnosis", persons, key, settings)
    source_code, name = clean_text(F.col("icd_code")), clean_text(F.col("diagnosis_name"))
    by_name = icd10.select(F.col("code").alias("_by_name"), F.col("name").alias("_name"))
    known = icd10.select(F.col("code").alias("_known"))
    code = F.coalesce(normalize_icd10(source_code), F.when(source_code.isNull(), F.col("_by_name")))
    return (p.rows.join(by_name, name == F.col("_name"), "left")
            .join(known, code == F.col("_known"), "left")
            .select(keyed_hash(key, F.lit("diagnosis"), F.col("_hospital_id"), F.col(RECORD_KEY))
                    .alias("diagnosis_key"),
                    *_owners(p, key), code.alias("icd10_code"), source_code.alias("source_code"),
                    name.alias("source_name"), F.col("_known").isNotNull().alias("is_mapped"),
                    p.timestamp("diagnosis_time"), F.lit(vocab_version).alias("vocab_version"),
                    *_tail(p)))


def standardize_procedures(bronze: DataFrame, persons: DataFrame, icd9cm3: DataFrame, key: bytes,
                           settings: Settings, vocab_version: str) -> DataFrame:
    """ICD-9-CM-3 normalized to `NN.N[N]`; `is_mapped`: the code is in conf/vocab/icd9cm3.csv."""
    p = prepare(bronze, "procedure", persons, key, settings)
    source_code = clean_text(F.col("procedure_code"))
    code = normalize_icd9cm3(source_code)
    known = icd9cm3.select(F.col("code").alias("_known"))
    return (p.rows.join(known, code == F.col("_known"), "left")
            .select(keyed_hash(key, F.lit("procedure"), F.col("_hospital_id"), F.col(RECORD_KEY))
                    .alias("procedure_key"),
                    *_owners(p, key), F.col("_known").alias("icd9cm3_code"), source_code.alias("source_code"),
                    clean_text(F.col("procedure_name")).alias("source_name"),
                    F.col("_known").isNotNull().alias("is_mapped"), p.timestamp("procedure_time"),
                    F.lit(vocab_version).alias("vocab_version"), *_tail(p)))


def _measurements(p: Prepared, codes: DataFrame, units: DataFrame, code_column: str) -> DataFrame:
    """Join local codes to LOINC and (LOINC, source unit) to the canonical unit and its factor."""
    return (p.rows
            .join(codes, (F.col("_hospital_id") == codes.hospital_id)
                  & (clean_text(F.col(code_column)) == codes.local_code), "left")
            .join(units, (codes.loinc_code == units.loinc_code) & (clean_text(F.col("unit")) == units.source_unit),
                  "left"))


def _measured(codes: DataFrame, units: DataFrame) -> list[Column]:
    """The value columns shared by labs and vitals: standard code, source and converted value and unit."""
    converted = F.try_multiply(clean_text(F.col("value")).try_cast("double"), F.col("factor"))
    return [codes.loinc_code.alias("loinc_code"),
            clean_text(F.col("value")).alias("source_value"), clean_text(F.col("unit")).alias("source_unit"),
            F.round(converted, 4).alias("value"), units.canonical_unit.alias("unit"),
            codes.loinc_code.isNotNull().alias("is_mapped"), units.factor.isNotNull().alias("unit_ok")]


def standardize_labs(bronze: DataFrame, persons: DataFrame, lab_codes: DataFrame, units: DataFrame, key: bytes,
                     settings: Settings, vocab_version: str) -> DataFrame:
    """Local lab codes -> LOINC, values converted to the canonical unit; unknown codes or units are
    kept with their source values and flagged (is_mapped / unit_ok false, value null), never guessed."""
    p = prepare(bronze, "lab_result", persons, key, settings)
    return _measurements(p, lab_codes, units, "test_code").select(
        keyed_hash(key, F.lit("lab"), F.col("_hospital_id"), F.col(RECORD_KEY)).alias("lab_key"),
        *_owners(p, key), clean_text(F.col("test_code")).alias("source_code"),
        clean_text(F.col("test_name")).alias("source_name"), *_measured(lab_codes, units),
        p.timestamp("result_time"), F.lit(vocab_version).alias("vocab_version"), *_tail(p))


def standardize_vitals(bronze: DataFrame, persons: DataFrame, vital_codes: DataFrame, units: DataFrame,
                       key: bytes, settings: Settings, vocab_version: str) -> DataFrame:
    """Nursing measure codes -> LOINC, values in the canonical unit (℃ -> Cel, 次/分 -> /min, ...)."""
    p = prepare(bronze, "vital_sign", persons, key, settings)
    return _measurements(p, vital_codes, units, "measure_code").select(
        keyed_hash(key, F.lit("vital"), F.col("_hospital_id"), F.col(RECORD_KEY)).alias("vital_key"),
        *_owners(p, key), clean_text(F.col("measure_code")).alias("source_code"),
        clean_text(F.col("measure_name")).alias("source_name"), *_measured(vital_codes, units),
        p.timestamp("measured_at"), F.lit(vocab_version).alias("vocab_version"), *_tail(p))


def standardize_medications(bronze: DataFrame, persons: DataFrame, drug_codes: DataFrame, key: bytes,
                            settings: Settings, vocab_version: str) -> DataFrame:
    """Local drug codes -> ATC; the dose as a number beside the dose as sent."""
    p = prepare(bronze, "medication", persons, key, settings)
    return (p.rows
            .join(drug_codes, (F.col("_hospital_id") == drug_codes.hospital_id)
                  & (clean_text(F.col("drug_code")) == drug_codes.local_code), "left")
            .select(keyed_hash(key, F.lit("medication"), F.col("_hospital_id"), F.col(RECORD_KEY))
                    .alias("medication_key"),
                    *_owners(p, key), drug_codes.atc_code.alias("atc_code"),
                    clean_text(F.col("drug_code")).alias("source_code"),
                    clean_text(F.col("drug_name")).alias("source_name"),
                    clean_text(F.col("dose")).try_cast("double").alias("dose"),
                    clean_text(F.col("dose")).alias("source_dose"), clean_text(F.col("dose_unit")).alias("dose_unit"),
                    clean_text(F.col("route")).alias("route"), clean_text(F.col("frequency")).alias("frequency"),
                    drug_codes.atc_code.isNotNull().alias("is_mapped"), p.timestamp("start_time"),
                    p.timestamp("end_time"), F.lit(vocab_version).alias("vocab_version"), *_tail(p)))


def decoded(column: str, entity: str, settings: Settings) -> Column:
    """A bronze text column, decoded from base64 where its hospital's contract says it is sent so."""
    text = F.col(column)
    for hospital, contract in sorted(settings.sources.items()):
        source = contract.entities.get(entity)
        if source is not None and column in source.base64:
            text = F.when(F.col("_hospital_id") == hospital,
                          F.decode(F.try_to_binary(F.col(column), F.lit("base64")), "UTF-8")).otherwise(text)
    return text


def free_text(column: str, entity: str, settings: Settings) -> Column:
    """A free-text column, decoded, then scrubbed of direct identifiers."""
    return mask_identifiers(decoded(column, entity, settings), vocab.surnames(settings.vocab_dir)).alias(column)


def standardize_imaging(bronze: DataFrame, persons: DataFrame, key: bytes, settings: Settings) -> DataFrame:
    p = prepare(bronze, "imaging_report", persons, key, settings)
    return p.rows.select(
        keyed_hash(key, F.lit("imaging"), F.col("_hospital_id"), F.col(RECORD_KEY)).alias("report_key"),
        *_owners(p, key), clean_text(F.col("modality")).alias("modality"),
        clean_text(F.col("body_part")).alias("body_part"), free_text("report_text", "imaging_report", settings),
        p.timestamp("report_time"), *_tail(p))


def standardize_notes(bronze: DataFrame, persons: DataFrame, key: bytes, settings: Settings) -> DataFrame:
    p = prepare(bronze, "note", persons, key, settings)
    return p.rows.select(
        keyed_hash(key, F.lit("note"), F.col("_hospital_id"), F.col(RECORD_KEY)).alias("note_key"),
        *_owners(p, key), clean_text(F.col("note_type")).alias("note_type"),
        free_text("note_text", "note", settings), p.timestamp("note_time"), *_tail(p))


def _owners(p: Prepared, key: bytes) -> list[Column]:
    """hospital_id, source_id, encounter_key, patient_key, person_key: the record and who it belongs to."""
    return [F.col("_hospital_id").alias("hospital_id"), "source_id", encounter_key(key),
            p.own_key.alias("patient_key"), p.person_key.alias("person_key")]


def _tail(p: Prepared) -> list[Column]:
    """updated_at, the bronze lineage and `_cancelled` (dropped by the merge)."""
    return [p.updated.alias("updated_at"), *_lineage(), p.cancelled.alias(CANCELLED)]


OUTPUTS = (PERSON, IDENTITY, ENCOUNTER, DIAGNOSIS, PROCEDURE, LAB_RESULT, VITAL_SIGN, MEDICATION, IMAGING_REPORT, NOTE,
           DQ_RESULT, REFINE_STATE, REFINE_VOCAB)


def refine_inputs(spark: SparkSession, settings: Settings) -> list[Written]:
    return [io.describe(spark, ref, settings.root) for ref in BRONZE.values() if io.exists(spark, ref, settings.root)]


def event_tables(spark: SparkSession, settings: Settings, bronze: dict[str, DataFrame], people: DataFrame,
                 key: bytes) -> list[tuple[DataFrame, TableRef]]:
    """Every silver event table as a DataFrame (with `_cancelled`), beside the table it merges into."""
    version = vocab.version(settings.vocab_dir)
    load = lambda name: vocab.load(spark, settings.vocab_dir, name)  # noqa: E731
    units = load("units")
    return [
        (standardize_encounters(bronze["encounter"], people, load("encounter_types"), key, settings), ENCOUNTER),
        (standardize_diagnoses(bronze["diagnosis"], people, load("icd10"), key, settings, version), DIAGNOSIS),
        (standardize_procedures(bronze["procedure"], people, load("icd9cm3"), key, settings, version), PROCEDURE),
        (standardize_labs(bronze["lab_result"], people, load("lab_codes"), units, key, settings, version),
         LAB_RESULT),
        (standardize_vitals(bronze["vital_sign"], people, load("vital_codes"), units, key, settings, version),
         VITAL_SIGN),
        (standardize_medications(bronze["medication"], people, load("drug_codes"), key, settings, version),
         MEDICATION),
        (standardize_imaging(bronze["imaging_report"], people, key, settings), IMAGING_REPORT),
        (standardize_notes(bronze["note"], people, key, settings), NOTE),
    ]


@dataclass(frozen=True)
class Batches:
    """What a refine merges: the bronze batches not refined yet, or all of them (`full`) when silver is new, the
    configuration its rows depend on changed since the last refine (a rule, a contract, a vocabulary other than
    the code mappings) or a full pass is asked for; and beside them every row of the records whose codes a new
    code-mapping vocabulary changed (`remapped`: silver table -> their hospital and record key)."""

    ids: list[str]
    full: bool
    remapped: dict[str, DataFrame] = field(default_factory=dict)
    mappings: remap.Mappings | None = None  # the code mappings to record, when silver's record of them is stale

    def of(self, frame: DataFrame, entity: str) -> DataFrame:
        if self.full:
            return frame
        new = F.col("_batch_id").isin(self.ids)
        if entity not in self.remapped:
            return frame.where(new)
        records = self.remapped[entity].withColumn("_remapped", F.lit(True))
        keyed = frame.withColumn(RECORD_KEY, record_key(SOURCE_ID[entity]))
        return (keyed.join(records, ["_hospital_id", RECORD_KEY], "left")
                .where(new | F.col("_remapped").isNotNull()).drop(RECORD_KEY, "_remapped"))


def batches_to_refine(spark: SparkSession, settings: Settings, full: bool = False) -> Batches:
    """Landed batches (from the ledger: one row per file) not yet refined, and the records a change of the code
    mappings re-maps; all batches for a full pass."""
    root = settings.root
    if not io.exists(spark, INGEST_LEDGER, root):
        return Batches([], full)
    landed = {r.batch_id for r in io.read(spark, INGEST_LEDGER, root).where(F.col("status") == "landed")
              .select("batch_id").distinct().collect()}  # one row per ingest run
    done = ({(r.batch_id, r.config_hash) for r in io.read(spark, REFINE_STATE, root).collect()}  # per batch
            if io.exists(spark, REFINE_STATE, root) else set())
    same_config = {b for b, config in done if config == settings.refine_hash}
    mappings, applied = remap.current(settings.vocab_dir), remap.applied(spark, root)
    full = (full or not done or applied is None or not io.exists(spark, PERSON, root)
            or any(b not in same_config for b, _ in done))
    if full:
        return Batches(sorted(landed), True, mappings=mappings)
    changes = remap.changed(applied, mappings)
    if not changes:
        return Batches(sorted(landed - same_config), False)
    records = remap.affected({t: io.read(spark, SILVER[t], root) for t in remap.AFFECTED_BY}, changes)
    held = {table: frame for table, frame in records.items() if not frame.isEmpty()}  # one small job per table
    return Batches(sorted(landed - same_config), False, held, mappings)


def refine(spark: SparkSession, settings: Settings, key: bytes, vault_key: bytes, run_id: str = "refine",
           full: bool = False) -> list[Written]:
    """Merge the bronze rows of new batches into silver by key (a full pass re-reads all of bronze), through the
    data-quality rules of conf/dq; a cancelled or quarantined record leaves silver. Returns the tables written."""
    root = settings.root
    quality.validate(spark, settings)  # a bad rule is refused before any table is touched
    vocab.validate(settings.vocab_dir)  # so is a vocabulary mapping a code twice
    vault.check_key(spark, root, vault_key, settings.main.secrets.vault_key_env)  # so is a wrong vault key
    batches = batches_to_refine(spark, settings, full)
    if not batches.ids and not batches.remapped:  # nothing new; a code-mapping change no silver row holds is recorded
        recorded = [_record_mappings(spark, settings, batches.mappings, run_id)] if batches.mappings else []
        return [io.describe(spark, ref, root) for ref in OUTPUTS if io.exists(spark, ref, root)] + recorded
    # an increment keeps the latest version (ties: the later batch); a full pass re-maps every row
    update_when = None if batches.full else INCREMENT_UPDATE_WHEN
    bronze = {e: resolve_references(batches.of(io.read_or_empty(spark, ref, root), e)) for e, ref in BRONZE.items()}
    patients = latest_patients(bronze["patient"], settings).persist()  # read by two merges
    sex = vocab.load(spark, settings.vocab_dir, "sex").alias("sex_vocab")
    checked = Checked(spark, settings, run_id, update_when)
    # every commit of this refine says, in the tables' history, which run and vocabulary version made it
    remapped = f"; re-map of {', '.join(sorted(batches.remapped))}" if batches.remapped else ""
    with commit_note(spark, run_id, f"refine; vocab {vocab.version(settings.vocab_dir)}; "
                                    f"{'full' if batches.full else 'increment'} of {len(batches.ids)} batches"
                                    f"{remapped}"):
        try:
            links = io.read_or_empty(spark, PERSON_LINK, root)
            identities = vault.encrypted(identity_rows(patients, key, settings), vault.key_frame(spark, vault_key))
            outputs = [checked.merge(standardize_persons(patients, sex, links, key, settings), PERSON),
                       io.merge(spark, identities, IDENTITY, root, update_when=update_when, skip_empty=True)]
            people = io.read(spark, PERSON, root)
            tables = event_tables(spark, settings, bronze, people, key)
            outputs.append(checked.merge(*tables[0]))  # encounters first: the others' rules look them up
            encounters = io.read(spark, ENCOUNTER, root).select("encounter_key", F.lit(True).alias("encounter_found"))
            arrived = checked.evaluated[ENCOUNTER.name].select("encounter_key")  # this run's, from the cache
            any_arrived = not arrived.isEmpty()
            for df, ref in tables[1:]:
                found = df.join(encounters, "encounter_key", "left").fillna(False, ["encounter_found"])
                outputs.append(checked.merge(found, ref))
                if not batches.full and any_arrived:  # rows flagged before their encounter arrived are judged again
                    outputs[-1] = checked.recheck(ref, encounters, arrived)
            outputs += checked.finish()
            if batches.mappings is not None:  # after the rows they re-map: a stop before re-maps them again
                outputs.append(_record_mappings(spark, settings, batches.mappings, run_id))
            state = spark.createDataFrame([(b, settings.refine_hash, run_id) for b in batches.ids],
                                          "batch_id STRING, config_hash STRING, run_id STRING")
            outputs.append(io.append(spark, state.withColumn("refined_at", F.current_timestamp()), REFINE_STATE, root))
        finally:
            patients.unpersist()
            checked.release()
    return outputs


def _record_mappings(spark: SparkSession, settings: Settings, mappings: remap.Mappings, run_id: str) -> Written:
    rows = remap.snapshot(spark, mappings, vocab.version(settings.vocab_dir), run_id)
    return io.overwrite(spark, rows, REFINE_VOCAB, settings.root)


class Checked:
    """Merges silver tables through their data-quality rules; the results and quarantined rows of every table
    are written once, at the end (or before the run stops on a `fail` rule)."""

    def __init__(self, spark: SparkSession, settings: Settings, run_id: str, update_when: str | None):
        self.spark, self.settings, self.run_id, self.update_when = spark, settings, run_id, update_when
        self.results: list[tuple] = []
        self.quarantine: list[DataFrame] = []
        self.evaluated: dict[str, DataFrame] = {}  # each merged table's new rows, evaluated (cached)
        self.lives: DataFrame | None = None  # births and deaths per patient record, once encounters are merged

    def merge(self, df: DataFrame, ref: TableRef) -> Written:
        conf = self.settings.dq.get(ref.name)
        df = plausible_times(df, [f.name for f in df.schema if isinstance(f.dataType, T.TimestampType)])
        evaluated = self.evaluated[ref.name] = quality.evaluate(df, conf).persist()
        results = quality.row_results(evaluated, conf, ref.name, self.run_id)
        self.results += results
        try:
            quality.stop_on_fail(results, conf)
        except quality.DataQualityFailure:
            quality.write_results(self.spark, self.settings, self.results)
            raise
        if any(r[6] == "quarantine" and r[9] for r in results):
            self.quarantine.append(quality.quarantine_rows(evaluated, conf, ref.name, self.run_id))
        rows = evaluated.select(*[quality.flags(conf).alias(c) if c == "dq_flags" else c for c in ref.columns],
                                (F.col(CANCELLED) | quality.quarantined(conf)).alias(CANCELLED))
        written = io.merge(self.spark, rows, ref, self.settings.root, update_when=self.update_when,
                           delete_column=CANCELLED, skip_empty=True)  # `rows` reads the cache
        if ref == ENCOUNTER:  # the lifespan checks of the encounters and of every table after them
            silver = lambda name: io.read(self.spark, SILVER[name], self.settings.root)  # noqa: E731
            self.lives = quality.lifespan(silver).persist()
        self.results += quality.check_results(self.spark, self.settings, conf, ref.name, self.run_id, self.lives)
        return written

    def recheck(self, ref: TableRef, encounters: DataFrame, arrived: DataFrame) -> Written:
        """Flags of a table's rows whose encounter arrived in this run, judged again (a lab lands before its
        stay's discharge record does)."""
        conf = self.settings.dq.get(ref.name)
        table = io.read(self.spark, ref, self.settings.root)
        flagged = (table.where(F.size("dq_flags") > 0).join(arrived.distinct(), "encounter_key", "left_semi")
                   .join(encounters, "encounter_key", "left").fillna(False, ["encounter_found"]))
        again = quality.evaluate(flagged, conf).select(*ref.keys, quality.flags(conf).alias("dq_flags"))
        if again.isEmpty():  # as a rule nothing waited for this run's encounters: no MERGE, no empty commit
            return io.describe(self.spark, ref, self.settings.root)
        return io.update_columns(self.spark, again, ref, self.settings.root, ("dq_flags",))

    def finish(self) -> list[Written]:
        written = []
        if self.quarantine:
            written.append(quality.write_quarantine(self.spark, self.settings,
                                                    reduce(DataFrame.unionByName, self.quarantine)))
        results = quality.write_results(self.spark, self.settings, self.results)
        return written + ([results] if results else [])

    def release(self) -> None:
        for frame in [*self.evaluated.values(), *([self.lives] if self.lives is not None else [])]:
            frame.unpersist()
