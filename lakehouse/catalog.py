"""Every table's name, location and schema, in one place.

Tables live at `<root>/<layer>/<name>` as Delta tables and are registered in the Spark catalog as
`<layer>.<name>`. Nobody else builds a table path.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import types as T

LAYERS = ("bronze", "silver", "gold", "ops", "vault")


@dataclass(frozen=True)
class TableRef:
    layer: str
    name: str
    schema_ddl: str
    keys: tuple[str, ...] = ()
    description: str = ""

    @property
    def qualified(self) -> str:
        return f"{self.layer}.{self.name}"

    def path(self, root: str) -> str:
        return f"{root.rstrip('/')}/{self.layer}/{self.name}"

    @property
    def schema(self) -> T.StructType:
        """The Spark schema (parsing DDL needs a running Spark)."""
        return T.StructType.fromDDL(self.schema_ddl)

    @property
    def fields(self) -> list[tuple[str, str]]:
        """(name, type) of each column, without Spark: the top-level comma-separated fields of the DDL."""
        fields, depth, current = [], 0, ""
        for char in self.schema_ddl:
            depth += {"<": 1, ">": -1}.get(char, 0)
            if char == "," and depth == 0:
                fields.append(current)
                current = ""
            else:
                current += char
        fields.append(current)
        return [(f.split()[0], " ".join(f.split()[1:])) for f in fields if f.strip()]

    @property
    def columns(self) -> list[str]:
        return [name for name, _ in self.fields]


# --- bronze: every value as received (strings) plus lineage ------------------------------------

BRONZE_COLUMNS: dict[str, tuple[str, ...]] = {
    "patient": ("mrn", "name", "national_id", "sex", "birth_date", "phone", "address", "updated_at"),
    "encounter": ("encounter_id", "mrn", "encounter_type", "admission_type", "department", "ward", "bed",
                  "admit_time", "discharge_time", "discharge_disposition", "status", "updated_at"),
    "diagnosis": ("diagnosis_id", "encounter_id", "mrn", "icd_code", "diagnosis_name", "diagnosis_time", "status",
                  "updated_at"),
    "procedure": ("procedure_id", "encounter_id", "mrn", "procedure_code", "procedure_name", "procedure_time",
                  "updated_at"),
    "lab_result": ("result_id", "encounter_id", "mrn", "test_code", "test_name", "value", "unit", "reference_range",
                   "abnormal_flag", "result_time", "status", "updated_at"),
    "vital_sign": ("vital_id", "encounter_id", "mrn", "measure_code", "measure_name", "value", "unit", "measured_at",
                   "updated_at"),
    "medication": ("order_id", "encounter_id", "mrn", "drug_code", "drug_name", "dose", "dose_unit", "route",
                   "frequency", "start_time", "end_time", "status", "updated_at"),
    "imaging_report": ("report_id", "encounter_id", "mrn", "modality", "body_part", "report_text", "report_time",
                       "updated_at"),
    "note": ("note_id", "encounter_id", "mrn", "note_type", "note_text", "note_time", "updated_at"),
}
ENTITIES = tuple(BRONZE_COLUMNS)
# what a bronze string is meant to hold, for profiling a dump against its contract (validate-source)
TIME_COLUMNS = frozenset({"updated_at", "admit_time", "discharge_time", "diagnosis_time", "procedure_time",
                          "result_time", "measured_at", "start_time", "end_time", "report_time", "note_time"})
DATE_COLUMNS = frozenset({"birth_date"})
NUMBER_COLUMNS = frozenset({"value", "dose"})
SOURCE_SYSTEM = {"patient": "HIS", "encounter": "HIS", "diagnosis": "EMR", "procedure": "EMR", "lab_result": "LIS",
                 "vital_sign": "NURSING", "medication": "HIS", "imaging_report": "PACS", "note": "EMR"}

LINEAGE_DDL = (
    "_hospital_id STRING, _source_system STRING, _source_file STRING, _source_line BIGINT, "
    "_batch_id STRING, _ingested_at TIMESTAMP, _record_hash STRING, _extra MAP<STRING, STRING>"
)


def _bronze(entity: str) -> TableRef:
    columns = ", ".join(f"{c} STRING" for c in BRONZE_COLUMNS[entity])
    return TableRef("bronze", entity, f"{columns}, {LINEAGE_DDL}",
                    description=f"{entity} rows as received, append-only, with lineage")


BRONZE = {entity: _bronze(entity) for entity in BRONZE_COLUMNS}

# --- ops: the platform's own tables -------------------------------------------------------------

_IO = "ARRAY<STRUCT<table: STRING, version: BIGINT, rows: BIGINT>>"
JOB_RUN = TableRef(
    "ops", "job_run",
    f"job STRING, run_id STRING, started_at TIMESTAMP, ended_at TIMESTAMP, status STRING, "
    f"config_hash STRING, git_revision STRING, inputs {_IO}, outputs {_IO}, message STRING",
    keys=("run_id",), description="one row per job run",
)
INGEST_LEDGER = TableRef(
    "ops", "ingest_ledger",
    "path STRING, size BIGINT, sha256 STRING, hospital_id STRING, entity STRING, batch_id STRING, "
    "rows_read BIGINT, rows_landed BIGINT, rows_quarantined BIGINT, status STRING, reason STRING, "
    "ingested_at TIMESTAMP, modified_at TIMESTAMP",
    keys=("path", "sha256"), description="one row per file version seen in landing: proves nothing was lost",
)
QUARANTINE = TableRef(
    "ops", "quarantine",
    "layer STRING, stage STRING, hospital_id STRING, entity STRING, source_file STRING, source_line BIGINT, "
    "raw STRING, reason STRING, batch_id STRING, quarantined_at TIMESTAMP",
    description="records that could not be used, with the reason, file and line",
)

DQ_RESULT = TableRef(
    "ops", "dq_result",
    "run_id STRING, table STRING, rule STRING, kind STRING, category STRING, severity STRING, action STRING, "
    "hospital_id STRING, checked_rows BIGINT, failed_rows BIGINT, pass_rate DOUBLE, threshold DOUBLE, "
    "status STRING, evaluated_at TIMESTAMP",
    description="one row per refine run, data-quality rule or table check, and hospital",
)

REFINE_STATE = TableRef(
    "ops", "refine_state",
    "batch_id STRING, config_hash STRING, run_id STRING, refined_at TIMESTAMP",
    description="bronze batches a refine has merged into silver, with the hash of the settings silver's rows "
                "depend on (config_hash: Settings.refine_hash; a change means a full pass)",
)

REFINE_VOCAB = TableRef(
    "ops", "refine_vocab",
    "vocabulary STRING, entry ARRAY<STRING>, version STRING, run_id STRING",
    description="the code mappings silver's rows were mapped with, one row per entry: the next refine re-maps "
                "the rows whose codes a new vocabulary version changed",
)

AUDIT_LOG = TableRef(
    "ops", "audit_log",
    "at TIMESTAMP, writer STRING, seq BIGINT, actor STRING, role STRING, hospital_id STRING, action STRING, "
    "target STRING, tables ARRAY<STRING>, versions MAP<STRING, BIGINT>, rows BIGINT, purpose STRING, "
    "outcome STRING, status INT, duration_ms DOUBLE, prev_hash STRING, hash STRING, columns ARRAY<STRING>",
    keys=("writer", "seq"),
    description="who read what, when and with what outcome: one row per data-service request, read through "
                "lakehouse.access, research export, job run or erasure; each writer's rows are chained by hash "
                "(hash = sha256 of prev_hash and the row)",
)

# --- vault: direct identifiers, encrypted column by column ---------------------------------------

IDENTITY = TableRef(
    "vault", "identity",
    "patient_key STRING, hospital_id STRING, mrn_enc BINARY, name_enc BINARY, national_id_enc BINARY, "
    "birth_date_enc BINARY, phone_enc BINARY, address_enc BINARY, check_enc BINARY, updated_at TIMESTAMP",
    keys=("patient_key",),
    description="AES-GCM encrypted identifiers (birth date as yyyy-MM-dd); check_enc encrypts patient_key, so a "
                "wrong key is detected before anything is written; identity role only",
)

# --- silver: the region's standard clinical model ------------------------------------------------

_LINEAGE_SILVER = "dq_flags ARRAY<STRING>, source_file STRING, source_line BIGINT, batch_id STRING"
PERSON = TableRef(
    "silver", "person",
    f"patient_key STRING, person_key STRING, hospital_id STRING, sex STRING, birth_year INT, age_band STRING, "
    f"has_national_id BOOLEAN, updated_at TIMESTAMP, {_LINEAGE_SILVER}",
    keys=("patient_key",),
    description="one row per hospital patient record; person_key links records of one person",
)
ENCOUNTER = TableRef(
    "silver", "encounter",
    f"encounter_key STRING, hospital_id STRING, source_encounter_id STRING, patient_key STRING, "
    f"person_key STRING, encounter_type STRING, source_encounter_type STRING, department STRING, "
    f"admit_time TIMESTAMP, discharge_time TIMESTAMP, discharge_disposition STRING, "
    f"updated_at TIMESTAMP, {_LINEAGE_SILVER}",
    keys=("encounter_key",), description="visits and stays; inpatient ones have admit and discharge",
)
DIAGNOSIS = TableRef(
    "silver", "diagnosis",
    f"diagnosis_key STRING, hospital_id STRING, source_id STRING, "
    f"encounter_key STRING, patient_key STRING, person_key STRING, "
    f"icd10_code STRING, source_code STRING, source_name STRING, is_mapped BOOLEAN, "
    f"diagnosis_time TIMESTAMP, updated_at TIMESTAMP, {_LINEAGE_SILVER}",
    keys=("diagnosis_key",), description="diagnoses with normalized ICD-10 codes",
)
LAB_RESULT = TableRef(
    "silver", "lab_result",
    f"lab_key STRING, hospital_id STRING, source_id STRING, "
    f"encounter_key STRING, patient_key STRING, person_key STRING, loinc_code STRING, "
    f"source_code STRING, source_name STRING, source_value STRING, source_unit STRING, "
    f"value DOUBLE, unit STRING, is_mapped BOOLEAN, unit_ok BOOLEAN, result_time TIMESTAMP, "
    f"vocab_version STRING, updated_at TIMESTAMP, {_LINEAGE_SILVER}",
    keys=("lab_key",), description="lab results in LOINC codes and one canonical unit per test",
)
PROCEDURE = TableRef(
    "silver", "procedure",
    f"procedure_key STRING, hospital_id STRING, source_id STRING, "
    f"encounter_key STRING, patient_key STRING, person_key STRING, icd9cm3_code STRING, "
    f"source_code STRING, source_name STRING, is_mapped BOOLEAN, procedure_time TIMESTAMP, vocab_version STRING, "
    f"updated_at TIMESTAMP, {_LINEAGE_SILVER}",
    keys=("procedure_key",), description="operations and procedures in ICD-9-CM-3",
)
VITAL_SIGN = TableRef(
    "silver", "vital_sign",
    f"vital_key STRING, hospital_id STRING, source_id STRING, "
    f"encounter_key STRING, patient_key STRING, person_key STRING, loinc_code STRING, "
    f"source_code STRING, source_name STRING, source_value STRING, source_unit STRING, "
    f"value DOUBLE, unit STRING, is_mapped BOOLEAN, unit_ok BOOLEAN, measured_at TIMESTAMP, "
    f"vocab_version STRING, updated_at TIMESTAMP, {_LINEAGE_SILVER}",
    keys=("vital_key",), description="nursing vital signs in LOINC codes and one canonical unit per measure",
)
MEDICATION = TableRef(
    "silver", "medication",
    f"medication_key STRING, hospital_id STRING, source_id STRING, "
    f"encounter_key STRING, patient_key STRING, person_key STRING, atc_code STRING, "
    f"source_code STRING, source_name STRING, dose DOUBLE, source_dose STRING, dose_unit STRING, route STRING, "
    f"frequency STRING, is_mapped BOOLEAN, start_time TIMESTAMP, end_time TIMESTAMP, vocab_version STRING, "
    f"updated_at TIMESTAMP, {_LINEAGE_SILVER}",
    keys=("medication_key",), description="medication orders in ATC codes",
)
IMAGING_REPORT = TableRef(
    "silver", "imaging_report",
    f"report_key STRING, hospital_id STRING, source_id STRING, "
    f"encounter_key STRING, patient_key STRING, person_key STRING, modality STRING, "
    f"body_part STRING, report_text STRING, report_time TIMESTAMP, updated_at TIMESTAMP, {_LINEAGE_SILVER}",
    keys=("report_key",), description="imaging reports (PACS); text with phone and ID numbers masked",
)
NOTE = TableRef(
    "silver", "note",
    f"note_key STRING, hospital_id STRING, source_id STRING, "
    f"encounter_key STRING, patient_key STRING, person_key STRING, note_type STRING, "
    f"note_text STRING, note_time TIMESTAMP, updated_at TIMESTAMP, {_LINEAGE_SILVER}",
    keys=("note_key",), description="clinical notes; text with phone and ID numbers masked",
)
PERSON_LINK = TableRef(
    "silver", "person_link",
    "patient_key STRING, hospital_id STRING, person_id STRING, person_key STRING, rule STRING, score DOUBLE, "
    "matched_patient_key STRING, agreed ARRAY<STRING>, flags ARRAY<STRING>, run_id STRING, linked_at TIMESTAMP",
    keys=("patient_key",),
    description="the regional person index: each hospital patient record, its person and the evidence "
                "(rule national_id, score or single; the strongest partner and the fields that agreed)",
)
PERSON_EVENT = TableRef(
    "silver", "person_event",
    "run_id STRING, event STRING, person_id STRING, other_person_id STRING, patient_key STRING, at TIMESTAMP",
    description="what each link run changed: persons created, records joined, persons merged or split",
)
SILVER = {t.name: t for t in (PERSON, ENCOUNTER, DIAGNOSIS, PROCEDURE, LAB_RESULT, VITAL_SIGN, MEDICATION,
                              IMAGING_REPORT, NOTE)}
# what each silver column means: the README's schema section is written from this
SILVER_COLUMN_DOCS = {
    "patient_key": "keyed hash of (hospital, MRN): one hospital's patient record",
    "person_key": "the region's person (silver.person_link): HMAC of the regional person id",
    "birth_year": "year of birth, top-coded so that nobody appears older than 90 at the record's last update "
                  "(updated_at; without one, at the refine) (no birth dates in silver)",
    "age_band": "five-year age band at the record's last update (updated_at; none without one); over 89 is 90+",
    "encounter_key": "keyed hash of (hospital, source encounter id)",
    "hospital_id": "the hospital that sent the record",
    "source_id": "the record's id in its hospital's system (with hospital_id: the source record key)",
    "dq_flags": "names of the data-quality rules (action warn) the row fails; see conf/dq/",
    "source_code": "the code as the hospital sent it (trimmed, half-width)",
    "source_name": "the test, drug, diagnosis or procedure name as sent",
    "source_value": "the value as sent, before unit conversion",
    "source_unit": "the unit as sent",
    "is_mapped": "the source code maps to the standard vocabulary (else the standard code is null)",
    "unit_ok": "the source unit is known for the code and was converted to the canonical unit",
    "vocab_version": "conf/vocab/VERSION at the refine that wrote the row",
    "updated_at": "the source system's update time (resends: the latest wins)",
    "source_file": "bronze lineage: the landing file of the row",
    "source_line": "bronze lineage: the record's line in that file",
    "batch_id": "the ingest batch that landed the row",
}

# --- gold ----------------------------------------------------------------------------------------

TIMELINE = TableRef(
    "gold", "patient_timeline",
    "person_key STRING, time TIMESTAMP, code STRING, numeric_value DOUBLE, text_value STRING, "
    "unit STRING, hospital_id STRING, encounter_key STRING, source_table STRING, source_key STRING",
    description="one row per clinical event, MEDS-like (subject, time, code, value), laid out by person_key",
)
PATIENT_SUMMARY = TableRef(
    "gold", "patient_summary",
    "person_key STRING, sex STRING, birth_year INT, hospitals ARRAY<STRING>, first_encounter_time TIMESTAMP, "
    "last_encounter_time TIMESTAMP, encounters BIGINT, inpatient_stays BIGINT, outpatient_visits BIGINT, "
    "emergency_visits BIGINT, deceased BOOLEAN, death_time TIMESTAMP, problems ARRAY<STRING>, "
    "latest_labs MAP<STRING, STRUCT<time: TIMESTAMP, value: DOUBLE, unit: STRING>>",
    keys=("person_key",),
    description="one row per person: demographics (birth year only), hospitals, encounters, active problems, "
                "latest key labs",
)
COHORT_ATTRITION = TableRef(
    "gold", "cohort_attrition",
    "cohort STRING, step INT, criterion STRING, kind STRING, persons BIGINT, index_events BIGINT, as_of DATE, "
    "built_at TIMESTAMP",
    keys=("cohort", "step"),
    description="per cohort: how many persons (and index events) remain after each criterion, in order",
)
COHORT_STEPS = TableRef(
    "gold", "cohort_steps",
    "cohort STRING, person_key STRING, passed ARRAY<BIGINT>",
    keys=("cohort", "person_key"),
    description="per cohort and person with an index event: index events left after each attrition step "
                "(gold.cohort_attrition is its sum; kept so that an increment re-counts only the persons it touches)",
)
INDICATOR_INPATIENT_DAILY = TableRef(
    "gold", "indicator_inpatient_daily",
    "hospital_id STRING, department STRING, day DATE, admissions BIGINT, discharges BIGINT, deaths BIGINT, "
    "census_midnight BIGINT, beds INT, bed_occupancy DOUBLE, los_mean_days DOUBLE, los_median_days DOUBLE, "
    "discharges_alive BIGINT, readmissions_30d BIGINT, readmission_rate_30d DOUBLE, follow_up_complete BOOLEAN, "
    "inhospital_mortality DOUBLE, as_of DATE",
    keys=("hospital_id", "department", "day"),
    description="inpatient activity per hospital, department and day (definitions in the README)",
)
INDICATOR_REGISTRY = TableRef(
    "gold", "indicator_registry",
    "registry STRING, hospital_id STRING, as_of DATE, persons BIGINT",
    keys=("registry", "hospital_id"),
    description="chronic-disease registry sizes (cohorts with registry: true) per hospital, and ALL",
)


def cohort_table(name: str) -> TableRef:
    return TableRef(
        "gold", f"cohort_{name}",
        "person_key STRING, index_time TIMESTAMP, encounter_key STRING, hospital_id STRING, age_at_index INT, "
        "sex STRING, criteria_met ARRAY<STRING>, flags ARRAY<STRING>, "
        "series MAP<STRING, ARRAY<STRUCT<time: TIMESTAMP, value: DOUBLE, unit: STRING>>>, as_of DATE",
        keys=("person_key", "index_time", "encounter_key"),
        description=f"members of cohort {name} (conf/cohorts/{name}.yaml) with their index event",
    )


def features_table(task: str, feature_names: list[str] | tuple[str, ...] = ()) -> TableRef:
    features = "".join(f"{name} DOUBLE, " for name in feature_names)
    return TableRef(
        "gold", f"features_{task}",
        "person_key STRING, encounter_key STRING, hospital_id STRING, index_time TIMESTAMP, "
        f"{features}label INT, source_versions MAP<STRING, BIGINT>",
        keys=("person_key", "encounter_key", "index_time"),
        description=f"leakage-safe features and labels of task {task}, one row per index event (label null "
                    f"while its outcome window is open)",
    )


def predictions_table(task: str) -> TableRef:
    return TableRef(
        "gold", f"predictions_{task}",
        "person_key STRING, encounter_key STRING, index_time TIMESTAMP, hospital_id STRING, probability DOUBLE, "
        "model_name STRING, model_version STRING, run_id STRING, scored_at TIMESTAMP",
        keys=("person_key", "encounter_key", "index_time", "model_name", "model_version"),
        description=f"risk scores of task {task} with the model version that made them",
    )
