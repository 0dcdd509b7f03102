"""Typed configuration, loaded once and validated before Spark starts.

Layout (all YAML):
    conf/base/lakehouse.yaml      committed defaults
    conf/<env>/lakehouse.yaml     environment overlay (local, cluster), merged key by key
    conf/sources/<hospital>.yaml  one source contract per hospital
    conf/tasks/<task>.yaml        prediction tasks
    conf/features.yaml            what each feature set of a task computes
    conf/dq/<table>.yaml          data-quality rules of one silver table
    conf/linkage.yaml             the regional person index: blocking, evidence weights, threshold
    conf/cohorts/<cohort>.yaml    cohort definitions (gold.cohort_<name>)
    conf/beds.yaml                staffed beds per hospital and department (bed-occupancy indicators)
    conf/access.yaml              roles and the tables each may read (the data services follow it)
    conf/vocab/*.csv              vocabularies (read by the silver stage, not here)

Every error names the file and the dotted key, and is raised before any data is touched.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from lakehouse.errors import ConfigError

ROOT_ENV = "LAKEHOUSE_ROOT"
MAIN_FILE = "lakehouse.yaml"
# the vocabularies under conf/vocab/ that map a source code (or unit) to a standard one: a new version of one of them
# re-maps, on the next refine, only the silver rows whose codes it changed (lakehouse.silver.remap)
CODE_MAPPINGS = ("lab_codes", "vital_codes", "drug_codes", "units", "icd10", "icd9cm3")
_MASTER = re.compile(
    r"^(local(\[(\*|\d+)(,\d+)?\])?|local-cluster\[\d+,\d+,\d+\]|spark://[\w.\-]+:\d+(,[\w.\-]+:\d+)*"
    r"|yarn|k8s://.+)$"
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SparkSettings(Strict):
    master: str = "local[2]"
    app_name: str = "lakehouse"
    shuffle_partitions: PositiveInt = 4
    driver_memory: str = "2g"
    extra: dict[str, str] = Field(default_factory=dict, description="any further spark.* settings")

    @field_validator("master")
    @classmethod
    def _valid_master(cls, value: str) -> str:
        if not _MASTER.match(value):
            raise ValueError(
                f"invalid master URL {value!r}: expected local[N], local[*], spark://host:port, yarn or k8s://..."
            )
        return value


class MlflowSettings(Strict):
    tracking_uri: str | None = Field(None, description="default: sqlite under <root>/mlflow; MLFLOW_TRACKING_URI wins")
    experiment: str = "lakehouse"


class SecretSettings(Strict):
    pseudonym_key_env: str = "LAKEHOUSE_PSEUDONYM_KEY"
    vault_key_env: str = "LAKEHOUSE_VAULT_KEY"
    file: str = Field("var/secrets/lakehouse.env", description="ignored KEY=VALUE file read when the env is unset")


class DemoSettings(Strict):
    out: str = "var/sample"
    hospitals: PositiveInt = 5
    patients: PositiveInt = 3000
    days: PositiveInt = 1
    seed: int = 42


class GoldSettings(Strict):
    as_of: dt.date | None = Field(None, description="the day relative windows count back from (cohorts, "
                                                    "registries, indicators); null: the day after the last event")
    timeline_rows_per_file: PositiveInt = Field(1_000_000, description="timeline files hold a person-key range each")
    problem_lookback_days: PositiveInt = Field(730, description="a diagnosis this recent (before the person's last "
                                                                "event) is on the active problem list")
    key_labs: list[str] = Field(default_factory=lambda: ["4548-4", "14682-9", "14749-6", "2951-2", "2823-3",
                                                         "718-7", "1751-7"],
                                description="LOINC codes whose latest value the patient summary shows")
    meds_dataset_name: str = "lakehouse-region"


Port = Annotated[int, Field(ge=1, le=65535)]
ServedLayer = Literal["silver", "gold"]  # bronze, ops and vault are never served


class SqlEndpointSettings(Strict):
    host: str = Field("127.0.0.1", description="address both servers bind to")
    thrift_port: Port = 10000
    connect_port: Port = 15002
    layers: list[ServedLayer] = Field(default_factory=lambda: ["silver", "gold"],
                                      description="layers whose tables are registered as <layer>.<table>")
    start_timeout_seconds: PositiveInt = 300


class ApiSettings(Strict):
    host: str = "127.0.0.1"
    port: Port = 8000
    tokens_file: str = Field("var/secrets/api_tokens.yaml",
                             description="ignored file of token hashes -> holder, role, hospital "
                                         "(`lakehouse api-token` adds one); LAKEHOUSE_API_TOKENS_FILE wins")
    refresh_seconds: float = Field(5.0, ge=0, description="how often a served table is checked for a new version")
    max_events: PositiveInt = Field(10_000, description="most timeline events one response returns")
    audit_flush_seconds: float = Field(1.0, gt=0, description="requests are appended to ops.audit_log this often")
    start_timeout_seconds: PositiveInt = 60


class ServicesSettings(Strict):
    run_dir: str = Field("var/run", description="PID, log and metastore files of the servers (ignored by git)")
    sql: SqlEndpointSettings = SqlEndpointSettings()
    api: ApiSettings = ApiSettings()


class ClusterSettings(Strict):
    """The standalone cluster `lakehouse cluster up` starts on this machine (files under services.run_dir)."""

    host: str = Field("127.0.0.1", description="address the master and the workers bind to")
    port: Port = 7077
    webui_port: Port = Field(8080, description="the master's web UI and JSON status (/json/)")
    workers: PositiveInt = 2
    worker_cores: PositiveInt = 1
    worker_memory: str = Field("2g", pattern=r"^[0-9]+[mg]$", description="memory a worker offers its executors")
    worker_webui_port: Port = Field(8081, description="worker i (from 0) serves its UI and JSON on this + i")
    executor_memory: str = Field("1g", pattern=r"^[0-9]+[mg]$", description="a submitted job's executors' heap")
    start_timeout_seconds: PositiveInt = 120


class ExportSettings(Strict):
    """Research exports (`lakehouse export`): how much re-identification risk an extract may carry."""

    k: int = Field(5, ge=2, description="every combination of the quasi-identifiers must hold at least k persons")
    max_suppressed_share: float = Field(0.05, ge=0, le=1, description="rows that may be suppressed rather than "
                                        "generalising the quasi-identifiers further")


class ErasureSettings(Strict):
    """`lakehouse erase` and `lakehouse vacuum`: how long a table's earlier files outlive a deletion."""

    retention_hours: int = Field(168, ge=0, description="VACUUM keeps files younger than this: an erased person "
                                 "is gone from earlier versions (time travel, rollback) only once it has passed")


class MainSettings(Strict):
    root: str = "var/lakehouse"
    landing: str = "var/sample/landing"
    jar_cache: str = ".cache/jars"
    spark: SparkSettings = SparkSettings()
    mlflow: MlflowSettings = MlflowSettings()
    secrets: SecretSettings = SecretSettings()
    demo: DemoSettings = DemoSettings()
    gold: GoldSettings = GoldSettings()
    services: ServicesSettings = ServicesSettings()
    cluster: ClusterSettings = ClusterSettings()
    export: ExportSettings = ExportSettings()
    erasure: ErasureSettings = ErasureSettings()


# --- source contracts ---------------------------------------------------------------------------

Entity = Literal["patient", "encounter", "diagnosis", "procedure", "lab_result", "vital_sign", "medication",
                 "imaging_report", "note"]


HL7_FIELD = re.compile(r"^(?P<segment>[A-Z][A-Z0-9]{2})-(?P<field>[1-9]\d*)(\[(?P<repeat>[1-9]\d*)\])?"
                       r"(\.(?P<component>[1-9]\d*))?(\.(?P<subcomponent>[1-9]\d*))?$")
JSON_PATH = re.compile(r"^\$(\.[A-Za-z_][\w-]*(\[\d+\])*)+$")
NOT_SENT = ""  # a column mapped to "" is one this hospital does not send: null in bronze


class EntitySource(Strict):
    """How one entity arrives from one hospital. `columns` maps each bronze column to where the value is:
    a column name (csv), a JSONPath such as `$.subject.reference` (jsonl, fhir_ndjson), or an HL7 field
    reference SEG-field[repetition].component.subcomponent such as `PID-3[2].1` (hl7v2)."""

    pattern: str = Field(description="glob of file names under <landing>/<hospital>/<day>/")
    format: Literal["csv", "jsonl", "hl7v2", "fhir_ndjson"] = "csv"
    encoding: str = "UTF-8"
    delimiter: str = ","
    header: bool = True
    compression: Literal["none", "gzip"] = Field("none", description="gzip files are read by their .gz suffix")
    timestamp_format: str = Field("yyyy-MM-dd HH:mm:ss", description="a Spark datetime pattern, or epoch_ms")
    date_format: str = "yyyy-MM-dd"
    resource_type: str | None = Field(None, description="fhir_ndjson: the resourceType routed to this entity")
    match: dict[str, str] = Field(
        default_factory=dict, description="fhir_ndjson/jsonl: JSONPath -> value a record must have to be routed here")
    segment: str = Field("OBX", pattern=r"^[A-Z][A-Z0-9]{2}$",
                         description="hl7v2: the segment that gives one bronze row per occurrence")
    required: list[str] = Field(
        default_factory=list, description="bronze columns whose field must be present in the record, else it is "
                                          "quarantined as malformed (an empty value is present)")
    columns: dict[str, str] = Field(
        description='bronze column -> the column name, JSONPath or HL7 field ("" = not sent)')
    base64: list[str] = Field(
        default_factory=list, description="bronze columns sent base64-encoded (a FHIR attachment's data): silver "
                                          "decodes them as UTF-8 before anything else reads them")
    max_record_bytes: int = Field(
        1_048_576, ge=1024, description="a record (CSV line, JSON line, HL7 message) longer than this is quarantined: "
                                        "a runaway field or a file without line breaks, not clinical data")

    def sent(self) -> dict[str, str]:
        """The mapped columns this hospital really sends."""
        return {bronze: where for bronze, where in self.columns.items() if where != NOT_SENT}

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        import codecs

        try:
            codecs.lookup(value)
        except LookupError as err:
            raise ValueError(f"unknown encoding {value!r}") from err
        return value

    @field_validator("delimiter")
    @classmethod
    def _one_char(cls, value: str) -> str:
        if len(value) != 1:
            raise ValueError(f"delimiter must be one character, got {value!r}")
        return value

    @field_validator("match")
    @classmethod
    def _json_paths(cls, value: dict[str, str]) -> dict[str, str]:
        for path in value:
            if not JSON_PATH.match(path):
                raise ValueError(f"not a JSONPath of the supported form $.a.b[0].c: {path!r}")
        return value


HOSPITAL_PATTERN = r"^[A-Z][A-Z0-9_]{1,15}$"


class SourceContract(Strict):
    hospital_id: str = Field(pattern=HOSPITAL_PATTERN)
    name: str
    quarantine_threshold: float = Field(0.05, ge=0, le=1,
                                        description="share of a run's rows read that may be quarantined; "
                                                    "more fails the ingest run (after landing everything)")
    entities: dict[Entity, EntitySource]


# --- data-quality rules -------------------------------------------------------------------------

# Kahn et al.'s harmonized data-quality terms: conformance, completeness, plausibility (atemporal, temporal,
# uniqueness)
DqCategory = Literal["conformance", "completeness", "plausibility.atemporal", "plausibility.temporal",
                     "plausibility.uniqueness"]
SilverTable = Literal["person", "encounter", "diagnosis", "procedure", "lab_result", "vital_sign", "medication",
                      "imaging_report", "note"]
RULE_NAME = r"^[a-z][a-z0-9_]*$"


class DqRule(Strict):
    """A row rule: `expression` is Spark SQL, true (or null) for a good row."""

    name: str = Field(pattern=RULE_NAME)
    description: str
    expression: str = Field(min_length=1)
    category: DqCategory
    severity: Literal["info", "warning", "error"] = "warning"
    action: Literal["warn", "quarantine", "fail"] = "warn"
    threshold: float = Field(0.99, ge=0, le=1, description="pass rate below which the rule's status is fail")


class DqCheck(Strict):
    """A table rule over the merged silver table, per hospital."""

    name: str = Field(pattern=RULE_NAME)
    description: str
    kind: Literal["completeness", "uniqueness", "referential", "after_birth", "before_death"] = Field(
        description="after_birth: the row's time (its one column) is not in a year before its patient's birth year "
                    "(silver.person); before_death: not after its patient's death (the end of a stay that ended "
                    "in death, silver.encounter)")
    columns: list[str] = Field(min_length=1)
    references: str | None = Field(None, pattern=r"^silver\.[a-z_]+\.[a-z_]+$",
                                   description="referential: silver.<table>.<column> the column must exist in")
    category: DqCategory
    severity: Literal["info", "warning", "error"] = "warning"
    threshold: float = Field(0.99, ge=0, le=1)


class DqTable(Strict):
    table: SilverTable
    rules: list[DqRule] = []
    checks: list[DqCheck] = []


# --- the regional person index (conf/linkage.yaml) ------------------------------------------------

# each comparison of two patient records and the levels it can reach ("missing" when either side lacks the
# value: weight 0); equal valid national IDs link by rule, so that level's weight only documents the score
LINK_LEVELS = {
    "national_id": ("equal", "near", "conflict", "differ"),
    "name": ("exact", "same_sound", "transposed", "similar", "surname_only", "differ"),
    "birth_date": ("exact", "day_month_swapped", "same_year", "differ"),
    "sex": ("agree", "disagree"),
    "phone": ("exact", "differ"),
    "address": ("exact", "differ"),
}
LINK_FEATURES = ("national_id", "name_pinyin", "surname", "birth_date", "birth_year", "sex", "phone", "address")


class Linkage(Strict):
    """Blocking rules, evidence weights (log2 of m/u, Fellegi-Sunter style) and the link threshold."""

    threshold: float
    max_block_size: int = Field(500, ge=2, description="a larger block (a placeholder value) pairs nothing")
    blocking: list[list[Literal[LINK_FEATURES]]] = Field(min_length=1)  # type: ignore[valid-type]
    weights: dict[str, dict[str, float]]

    @field_validator("weights")
    @classmethod
    def _every_level(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for comparison, levels in LINK_LEVELS.items():
            if comparison not in value:
                raise ValueError(f"missing comparison {comparison!r} (levels {list(levels)})")
            if set(value[comparison]) != set(levels):
                raise ValueError(f"{comparison}: levels must be exactly {list(levels)}")
        unknown = set(value) - set(LINK_LEVELS)
        if unknown:
            raise ValueError(f"unknown comparisons {sorted(unknown)}; known: {list(LINK_LEVELS)}")
        return value


# --- cohorts (conf/cohorts/<name>.yaml) and beds (conf/beds.yaml) -----------------------------------

# code systems of gold.patient_timeline (a code is SYSTEM//value; MEDS_BIRTH and MEDS_DEATH stand alone)
CODE_SYSTEMS = ("ICD10", "ICD9CM3", "LOINC", "ATC", "ADMISSION", "DISCHARGE", "VISIT", "SEX", "LOCAL_DX",
                "LOCAL_PROC", "LOCAL_LAB", "LOCAL_VITAL", "LOCAL_DRUG")
STANDALONE_CODES = ("MEDS_BIRTH", "MEDS_DEATH")


def _check_codes(codes: list[str]) -> list[str]:
    for code in codes:
        system, sep, rest = code.partition("//")
        if code in STANDALONE_CODES:
            continue
        if not sep:
            raise ValueError(f"{code!r} has no code system: write SYSTEM//code (systems {list(CODE_SYSTEMS)})")
        if system not in CODE_SYSTEMS:
            raise ValueError(f"unknown code system {system!r} in {code!r}; known: {list(CODE_SYSTEMS)}")
    return codes


def _not_before(low, high, what: str, verb: str):
    """`high`, unless `low` is above it (an impossible window or range)."""
    if high is not None and low is not None and low > high:
        raise ValueError(f"impossible {what}: {verb}")
    return high


class Window(Strict):
    """Days relative to the anchor (the index event, or the as-of day), both ends inclusive; null is unbounded."""

    start_days: int | None = None
    end_days: int | None = None
    relative_to: Literal["index", "as_of"] = "index"

    @field_validator("end_days")
    @classmethod
    def _possible(cls, value: int | None, info) -> int | None:
        start = info.data.get("start_days")
        return _not_before(start, value, "window", f"start_days {start} is after end_days {value}")


class Range(Strict):
    min: float | None = None
    max: float | None = None

    @field_validator("max")
    @classmethod
    def _ordered(cls, value: float | None, info) -> float | None:
        low = info.data.get("min")
        return _not_before(low, value, "range", f"min {low} is above max {value}")


class Criterion(Strict):
    """One inclusion, exclusion or flag: events by code prefix (in a window, in the index stay, with a value in
    range, at least `min_count` of them; `absent` inverts), or an attribute of the index event (age, sex,
    encounter type)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str = ""
    codes: list[str] = Field(default_factory=list)
    window: Window | None = None
    same_encounter: bool = False
    value: Range | None = None
    min_count: PositiveInt = 1
    absent: bool = False
    age: Range | None = None
    sex: Literal["male", "female"] | None = None
    encounter_type: list[Literal["inpatient", "outpatient", "emergency"]] = Field(default_factory=list)

    @field_validator("codes")
    @classmethod
    def _known_systems(cls, value: list[str]) -> list[str]:
        return _check_codes(value)

    @property
    def is_event(self) -> bool:
        return bool(self.codes)

    @model_validator(mode="after")
    def _one_kind(self) -> Criterion:
        attributes = [k for k in ("age", "sex", "encounter_type") if getattr(self, k)]
        event_only = [k for k in ("window", "value", "same_encounter", "absent") if getattr(self, k)]
        if self.codes and attributes:
            raise ValueError(f"criterion {self.name}: codes and {attributes} in one criterion; split it in two")
        if not self.codes and not attributes:
            raise ValueError(f"criterion {self.name}: needs codes or one of age, sex, encounter_type")
        if not self.codes and event_only:
            raise ValueError(f"criterion {self.name}: {event_only} apply to events (codes) only")
        if self.same_encounter and self.window is not None:
            raise ValueError(f"criterion {self.name}: same_encounter and window exclude each other")
        return self


class CohortIndex(Strict):
    """The index events: timeline events by code prefix, optionally in a window before the as-of day."""

    codes: list[str] = Field(min_length=1)
    window: Window | None = None
    select: Literal["all", "first", "last"] = "all"

    @field_validator("codes")
    @classmethod
    def _known_systems(cls, value: list[str]) -> list[str]:
        return _check_codes(value)

    @field_validator("window")
    @classmethod
    def _as_of(cls, value: Window | None) -> Window | None:
        if value is not None and value.relative_to != "as_of":
            raise ValueError("the index window counts from the as-of day: set relative_to: as_of")
        if value is not None and value.start_days is not None and value.start_days > 0:
            raise ValueError("impossible window: the index cannot start after the as-of day")
        return value


class Series(Strict):
    """Values of one code family around the index, kept with each member (e.g. an HbA1c trajectory)."""

    codes: list[str] = Field(min_length=1)
    window: Window | None = None
    same_encounter: bool = False

    @field_validator("codes")
    @classmethod
    def _known_systems(cls, value: list[str]) -> list[str]:
        return _check_codes(value)


class CohortSpec(Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str
    registry: bool = Field(False, description="count members per hospital in gold.indicator_registry")
    as_of: dt.date | None = None
    index: CohortIndex
    inclusion: list[Criterion] = Field(default_factory=list)
    exclusion: list[Criterion] = Field(default_factory=list)
    flags: list[Criterion] = Field(default_factory=list)
    series: dict[str, Series] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique_names(self) -> CohortSpec:
        names = [c.name for c in (*self.inclusion, *self.exclusion, *self.flags)]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"criterion names must be unique in a cohort: {repeated}")
        return self


class Beds(Strict):
    """Staffed beds per hospital and inpatient department; a department not listed has `default`."""

    default: PositiveInt
    hospitals: dict[str, dict[str, PositiveInt]] = Field(default_factory=dict)

    def of(self, hospital: str, department: str) -> int:
        return self.hospitals.get(hospital, {}).get(department, self.default)


# --- prediction tasks ---------------------------------------------------------------------------

FEATURE_SETS = ("demographics", "stay", "labs", "vitals", "comorbidities", "utilisation")
STATS = ("count", "last", "min", "max", "mean", "slope")
NAME = r"^[a-z][a-z0-9_]*$"


class MeasurementSet(Strict):
    """Labs or vital signs: each name's code, and the statistics taken per look-back window."""

    codes: dict[str, str] = Field(min_length=1)
    stats: list[Literal[STATS]] = Field(min_length=1)  # type: ignore[valid-type]

    @field_validator("codes")
    @classmethod
    def _coded(cls, value: dict[str, str]) -> dict[str, str]:
        _check_codes(list(value.values()))
        for name in value:
            if not re.match(NAME, name):
                raise ValueError(f"measurement name {name!r} must match {NAME}")
        return value


class FeatureCatalog(Strict):
    """conf/features.yaml: what each feature set computes from the timeline (features are data)."""

    labs: MeasurementSet
    vitals: MeasurementSet
    comorbidities: dict[str, list[str]] = Field(min_length=1, description="flag name -> code prefixes")
    utilisation: dict[str, list[str]] = Field(min_length=1, description="count name -> codes")
    max_age: PositiveInt = Field(90, description="ages above are top-coded (de-identification)")

    @field_validator("comorbidities", "utilisation")
    @classmethod
    def _coded(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, codes in value.items():
            if not re.match(NAME, name) or not codes:
                raise ValueError(f"{name!r}: a name matching {NAME} with at least one code")
            _check_codes(codes)
        return value


class LookbackWindow(Strict):
    """History in [index - hours, index + end_hours): end_hours is 0 (the index itself is never seen)."""

    name: str = Field(pattern=r"^[0-9a-z_]+$")
    hours: PositiveInt
    end_hours: int = Field(0, le=0, description="a window may end before the index, never after it")


class TaskIndex(Strict):
    """The prediction moment: an inpatient stay's admission or discharge, plus offset_hours."""

    event: Literal["inpatient_admission", "inpatient_discharge"]
    offset_hours: int = Field(0, ge=0)


class TaskOutcome(Strict):
    """`admission`: an inpatient admission in (index, index + window_days]; `death_in_stay`: the index stay
    ends in death after the index."""

    kind: Literal["admission", "death_in_stay"]
    window_days: PositiveInt | None = None

    @model_validator(mode="after")
    def _window(self) -> TaskOutcome:
        if self.kind == "admission" and self.window_days is None:
            raise ValueError("an admission outcome needs window_days")
        if self.kind == "death_in_stay" and self.window_days is not None:
            raise ValueError("death_in_stay lasts until the index stay ends: drop window_days")
        return self


class Eligibility(Strict):
    age: Range | None = None
    cohort: str | None = Field(None, description="only persons who joined this cohort before the index time")


class ModelSpec(Strict):
    """One learner; the logistic regression is the baseline every task reports."""

    type: Literal["logistic_regression", "gbt"]
    reg_param: float = Field(0.01, ge=0)
    elastic_net_param: float = Field(0.0, ge=0, le=1)
    max_iter: PositiveInt = 100
    max_depth: PositiveInt = Field(4, le=12)
    step_size: float = Field(0.1, gt=0, le=1)
    subsampling_rate: float = Field(1.0, gt=0, le=1)
    min_instances_per_node: PositiveInt = 20


# the ModelSpec fields each learner uses (lakehouse.ml.train.fit passes these; docs/tasks.md lists them)
LEARNER_PARAMETERS: dict[str, tuple[str, ...]] = {
    "logistic_regression": ("reg_param", "elastic_net_param", "max_iter"),
    "gbt": ("max_iter", "max_depth", "step_size", "subsampling_rate", "min_instances_per_node"),
}


class Promotion(Strict):
    """The challenger becomes champion when its pooled external AUROC beats the champion's by `margin` and
    its expected calibration error is at most `max_ece_increase` worse."""

    margin: float = Field(0.0, ge=0)
    max_ece_increase: float = Field(0.01, ge=0)


class TaskSpec(Strict):
    name: str = Field(pattern=NAME)
    description: str
    model_name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    eligibility: Eligibility = Eligibility()
    index: TaskIndex
    outcome: TaskOutcome
    exclusions: list[Literal["died_before_index", "discharged_before_index"]] = Field(default_factory=list)
    lookback: list[LookbackWindow] = Field(min_length=1)
    feature_sets: list[Literal[FEATURE_SETS]] = Field(min_length=1)  # type: ignore[valid-type]
    models: list[ModelSpec] = Field(min_length=1)
    validation: Literal["leave_one_hospital_out", "person_split"] = "leave_one_hospital_out"
    test_fraction: float = Field(0.2, gt=0, lt=1, description="held-out persons under person_split")
    promotion: Promotion = Promotion()
    features: tuple[str, ...] = Field((), description="resolved by the loader from feature_sets; not written")

    @field_validator("features")
    @classmethod
    def _derived(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if value:
            raise ValueError("features are derived from feature_sets and conf/features.yaml; do not list them")
        return value

    @field_validator("models")
    @classmethod
    def _baseline_first(cls, value: list[ModelSpec]) -> list[ModelSpec]:
        if value[0].type != "logistic_regression":
            raise ValueError("the first model is the baseline and must be a logistic_regression")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
        if self.index.event == "inpatient_discharge" and "discharged_before_index" in self.exclusions:
            raise ValueError("discharged_before_index excludes every stay indexed at its discharge")
        names = [w.name for w in self.lookback]
        if len(set(names)) != len(names):
            raise ValueError(f"lookback window names repeat: {names}")
        return self


# --- access policy ------------------------------------------------------------------------------

ADMIN_ONLY_LAYERS = ("bronze", "ops", "vault")  # raw data, the platform's own records, identifiers
TABLE_PATTERN = r"^(\*|[a-z*][a-z0-9_*]*\.[a-z*][a-z0-9_*]*)$"
COLUMN_PATTERN = r"^[a-z*][a-z0-9_*]*\.[a-z*][a-z0-9_*]*\.[a-z*][a-z0-9_*]*$"


class Role(Strict):
    """What one role may read: tables as fnmatch patterns of `<layer>.<table>`."""

    description: str
    admin: bool = Field(False, description="may read every layer, bronze, ops and vault included")
    tables: list[str] = Field(description="patterns such as gold.* or gold.indicator_*")
    except_tables: list[str] = Field([], description="patterns of tables withheld although `tables` matches them")
    hidden_columns: list[str] = Field([], description="patterns of <layer>.<table>.<column> withheld from every read")
    hospital_scoped: bool = Field(False, description="sees only persons with an encounter at the holder's hospital")

    @field_validator("tables", "except_tables")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not re.match(TABLE_PATTERN, pattern):
                raise ValueError(f"not a <layer>.<table> pattern: {pattern!r}")
        return value

    @field_validator("hidden_columns")
    @classmethod
    def _column_patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not re.match(COLUMN_PATTERN, pattern):
                raise ValueError(f"not a <layer>.<table>.<column> pattern: {pattern!r}")
        return value

    def hides(self, table: str, column: str) -> bool:
        return any(fnmatch.fnmatchcase(f"{table}.{column}", pattern) for pattern in self.hidden_columns)

    def hides_any(self, table: str) -> bool:
        """Whether some column of `table` is withheld from this role."""
        return any(fnmatch.fnmatchcase(table, pattern.rsplit(".", 1)[0]) for pattern in self.hidden_columns)

    @model_validator(mode="after")
    def _admin_only_layers(self) -> Role:
        if not self.admin:
            for pattern in self.tables:
                layers = pattern.split(".", 1)[0]  # "*" alone is every layer
                for layer in ADMIN_ONLY_LAYERS:
                    if fnmatch.fnmatchcase(layer, layers):
                        raise ValueError(f"{pattern!r} would let a non-admin role read {layer}, which is admin-only")
        return self


class AccessPolicy(Strict):
    roles: dict[str, Role]

    @field_validator("roles")
    @classmethod
    def _role_names(cls, value: dict[str, Role]) -> dict[str, Role]:
        for name in value:
            if not re.match(RULE_NAME, name):
                raise ValueError(f"role names are lower_snake_case: {name!r}")
        return value

    def may_read(self, role: str, table: str) -> bool:
        """Whether `role` may read the qualified table `<layer>.<table>`."""
        spec = self.roles.get(role)
        if spec is None:
            return False
        if table.split(".", 1)[0] in ADMIN_ONLY_LAYERS and not spec.admin:
            return False
        return (any(fnmatch.fnmatchcase(table, pattern) for pattern in spec.tables)
                and not any(fnmatch.fnmatchcase(table, pattern) for pattern in spec.except_tables))


# --- the whole configuration --------------------------------------------------------------------

class Settings(BaseModel):
    """Everything a job needs, resolved: absolute paths, contracts, tasks."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    conf_dir: Path
    env: str
    main: MainSettings
    root: str
    sources: dict[str, SourceContract]
    tasks: dict[str, TaskSpec]
    dq: dict[str, DqTable] = {}
    linkage: Linkage | None = None
    cohorts: dict[str, CohortSpec] = {}
    beds: Beds | None = None
    features: FeatureCatalog | None = None
    access: AccessPolicy | None = None
    config_hash: str  # every setting the data depends on
    refine_hash: str = ""  # those silver's rows depend on, but the code mappings (a refine re-applies those in place)

    @property
    def project_dir(self) -> Path:
        return self.conf_dir.parent

    def path(self, value: str) -> str:
        """A configured path: URIs and absolute paths as they are, others relative to the project."""
        if "://" in value or value.startswith("/"):
            return value
        return str((self.project_dir / value).resolve())

    @property
    def landing(self) -> str:
        return self.path(self.main.landing)

    @property
    def vocab_dir(self) -> Path:
        return self.conf_dir / "vocab"

    def cohort(self, name: str) -> CohortSpec:
        if name not in self.cohorts:
            raise ConfigError(str(self.conf_dir / "cohorts"), name, f"no such cohort; known: {sorted(self.cohorts)}")
        return self.cohorts[name]

    def task(self, name: str) -> TaskSpec:
        if name not in self.tasks:
            raise ConfigError(str(self.conf_dir / "tasks"), name, f"no such task; known: {sorted(self.tasks)}")
        return self.tasks[name]


def load_settings(conf_dir: str | Path = "conf", env: str = "local", root: str | None = None) -> Settings:
    """Load and validate every configuration file; raise ConfigError naming the file and key."""
    conf_dir = Path(conf_dir).resolve()
    if not conf_dir.is_dir():
        raise ConfigError(str(conf_dir), "--conf-dir", "configuration folder not found")
    base_file = conf_dir / "base" / MAIN_FILE
    env_file = conf_dir / env / MAIN_FILE
    if not (conf_dir / env).is_dir():
        known = sorted(p.name for p in conf_dir.iterdir() if (p / MAIN_FILE).exists() and p.name != "base")
        raise ConfigError(str(conf_dir / env), "--env", f"unknown environment {env!r}; known: {known}")
    provenance: dict[str, str] = {}
    merged: dict[str, Any] = {}
    for file in (base_file, env_file):
        _merge(merged, _read_yaml(file), provenance, str(file), "")
    main = _validate(MainSettings, merged, provenance, str(base_file))

    chosen_root = root or os.environ.get(ROOT_ENV) or main.root
    sources = _load_dir(conf_dir / "sources", SourceContract)
    by_hospital: dict[str, SourceContract] = {}
    for file, contract in sources.items():
        if contract.hospital_id in by_hospital:
            raise ConfigError(file, "hospital_id", f"{contract.hospital_id} is declared twice")
        by_hospital[contract.hospital_id] = contract
        _check_columns(file, contract)
    dq = _load_dq(conf_dir / "dq")
    linkage_file = conf_dir / "linkage.yaml"
    linkage = _validate(Linkage, _read_yaml(linkage_file), {}, str(linkage_file))
    cohorts = _load_cohorts(conf_dir / "cohorts")
    features_file = conf_dir / "features.yaml"
    catalog = _validate(FeatureCatalog, _read_yaml(features_file), {}, str(features_file))
    tasks = _load_tasks(conf_dir / "tasks", catalog, cohorts)
    beds_file = conf_dir / "beds.yaml"
    beds = _validate(Beds, _read_yaml(beds_file), {}, str(beds_file))
    for hospital in beds.hospitals:
        if hospital not in by_hospital:
            raise ConfigError(str(beds_file), f"hospitals.{hospital}", f"no source contract for {hospital}")

    access_file = conf_dir / "access.yaml"
    access = _validate(AccessPolicy, _read_yaml(access_file), {}, str(access_file))

    # what the data depends on: a job re-runs when it changes (not the servers', the cluster's or the exports' settings)
    vocabularies = {f.name: f.read_text(encoding="utf-8") for f in sorted((conf_dir / "vocab").glob("*"))
                    if f.is_file()}
    data = {"main": main.model_dump(mode="json", exclude={"services", "cluster", "export", "erasure"}),
            "sources": {k: v.model_dump() for k, v in by_hospital.items()},
            "dq": {k: v.model_dump() for k, v in dq.items()}}
    refined_by = {**data, "vocab": {name: text for name, text in vocabularies.items()
                                    if name != "VERSION" and name.removesuffix(".csv") not in CODE_MAPPINGS}}
    digest = _digest({**data, "tasks": {k: v.model_dump() for k, v in tasks.items()}, "linkage": linkage.model_dump(),
                      "cohorts": {k: v.model_dump(mode="json") for k, v in cohorts.items()},
                      "beds": beds.model_dump(), "features": catalog.model_dump(), "vocab": vocabularies})
    settings = Settings(conf_dir=conf_dir, env=env, main=main, root="", sources=by_hospital,
                        tasks=tasks, dq=dq, linkage=linkage, cohorts=cohorts, beds=beds,
                        features=catalog, access=access, config_hash=digest, refine_hash=_digest(refined_by))
    return settings.model_copy(update={"root": settings.path(chosen_root)})


def _digest(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _read_yaml(file: Path) -> dict[str, Any]:
    if not file.exists():
        raise ConfigError(str(file), "<file>", "file not found")
    return _parse_yaml(file.read_text(encoding="utf-8"), str(file))


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    """A YAML mapping (an empty text is an empty one), or a ConfigError naming the source."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(source, "<yaml>", f"not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(source, "<top>", "expected a mapping of keys to values")
    return data


def _merge(into: dict, overlay: dict, provenance: dict[str, str], file: str, prefix: str) -> None:
    for key, value in overlay.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, provenance, file, f"{dotted}.")
        else:
            into[key] = value
            provenance[dotted] = file
            if isinstance(value, dict):
                for sub in _dotted_keys(value, f"{dotted}."):
                    provenance[sub] = file


def _dotted_keys(data: dict, prefix: str) -> list[str]:
    keys = []
    for key, value in data.items():
        keys.append(f"{prefix}{key}")
        if isinstance(value, dict):
            keys.extend(_dotted_keys(value, f"{prefix}{key}."))
    return keys


def _validate(model: type[BaseModel], data: dict, provenance: dict[str, str], default_file: str):
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "<top>"
        file = default_file
        parts = key.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in provenance:
                file = provenance[".".join(parts[:n])]
                break
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ConfigError(file, key, message) from None


def _load_dir(folder: Path, model: type[BaseModel]) -> dict[str, Any]:
    if not folder.is_dir():
        raise ConfigError(str(folder), "<folder>", "folder not found")
    loaded = {}
    for file in sorted(folder.glob("*.yaml")):
        data = _read_yaml(file)
        loaded[str(file)] = _validate(model, data, dict.fromkeys(_dotted_keys(data, ""), str(file)), str(file))
    return loaded


def _check_columns(file: str, contract: SourceContract) -> None:
    """Every bronze column mapped, and each mapping written the way its format reads it."""
    from lakehouse.catalog import BRONZE_COLUMNS

    for entity, source in contract.entities.items():
        known = BRONZE_COLUMNS[entity]
        key = f"entities.{entity}"
        for column, where in source.columns.items():
            if column not in known:
                raise ConfigError(file, f"{key}.columns.{column}",
                                  f"not a bronze column of {entity}; known: {list(known)}")
            if where == NOT_SENT:
                if column in source.required:
                    raise ConfigError(file, f"{key}.columns.{column}", "a required column must be mapped")
                continue
            if source.format == "hl7v2" and not HL7_FIELD.match(where):
                raise ConfigError(file, f"{key}.columns.{column}",
                                  f"{where!r} is not an HL7 field reference like PID-3[2].1 or OBX-5")
            if source.format in ("jsonl", "fhir_ndjson") and not JSON_PATH.match(where):
                raise ConfigError(file, f"{key}.columns.{column}",
                                  f"{where!r} is not a JSONPath of the supported form $.a.b[0].c")
        missing = [c for c in known if c not in source.columns]
        if missing:
            raise ConfigError(file, f"{key}.columns", f"missing mapping for {missing}")
        for i, column in enumerate(source.required):
            if column not in known:
                raise ConfigError(file, f"{key}.required.{i}", f"not a bronze column of {entity}")
        if source.format == "fhir_ndjson" and not source.resource_type:
            raise ConfigError(file, f"{key}.resource_type", "required for format fhir_ndjson")
        if source.format != "fhir_ndjson" and source.resource_type:
            raise ConfigError(file, f"{key}.resource_type", "only format fhir_ndjson routes by resourceType")
        if source.format != "csv" and source.encoding.replace("-", "").upper() != "UTF8":
            raise ConfigError(file, f"{key}.encoding", f"{source.format} files are read as UTF-8 only")
        if source.format == "csv" and source.required:
            raise ConfigError(file, f"{key}.required", "csv records are checked by their column count instead")
    by_pattern: dict[str, list[str]] = {}
    for entity, source in contract.entities.items():
        by_pattern.setdefault(source.pattern, []).append(entity)
    for pattern, entities in by_pattern.items():
        formats = {contract.entities[e].format for e in entities}
        if len(entities) > 1 and formats != {"fhir_ndjson"}:
            raise ConfigError(file, f"entities.{entities[1]}.pattern",
                              f"{pattern!r} is also the pattern of {entities[0]}: only fhir_ndjson entities may "
                              f"share files (their records are routed by resourceType)")


def _load_tasks(folder: Path, catalog: FeatureCatalog, cohorts: dict[str, CohortSpec]) -> dict[str, TaskSpec]:
    """Each task with its feature names resolved from its feature sets and the catalog."""
    from lakehouse.gold.features import feature_names

    tasks: dict[str, TaskSpec] = {}
    for file, spec in _load_dir(folder, TaskSpec).items():
        if spec.name in tasks:
            raise ConfigError(file, "name", f"task {spec.name!r} is defined twice")
        cohort = spec.eligibility.cohort
        if cohort is not None and cohort not in cohorts:
            raise ConfigError(file, "eligibility.cohort", f"no such cohort {cohort!r}; known: {sorted(cohorts)}")
        tasks[spec.name] = spec.model_copy(update={"features": tuple(feature_names(spec, catalog))})
    return tasks


def parse_cohort(text: str, source: str = "<text>") -> CohortSpec:
    """A cohort definition from YAML text (a notebook's draft), validated as conf/cohorts files are."""
    return _validate(CohortSpec, _parse_yaml(text, source), {}, source)


def _load_cohorts(folder: Path) -> dict[str, CohortSpec]:
    cohorts: dict[str, CohortSpec] = {}
    for file, spec in _load_dir(folder, CohortSpec).items():
        if spec.name in cohorts:
            raise ConfigError(file, "name", f"cohort {spec.name!r} is defined twice")
        if Path(file).stem != spec.name:
            raise ConfigError(file, "name", f"the file of cohort {spec.name!r} must be {spec.name}.yaml")
        cohorts[spec.name] = spec
    return cohorts


def _load_dq(folder: Path) -> dict[str, DqTable]:
    """One file per silver table; rule and check names unique across all of them (dq_result is keyed by name)."""
    tables: dict[str, DqTable] = {}
    seen: dict[str, str] = {}
    for file, table in _load_dir(folder, DqTable).items():
        if table.table in tables:
            raise ConfigError(file, "table", f"{table.table} has rules in another file too")
        tables[table.table] = table
        for kind, items in (("rules", table.rules), ("checks", table.checks)):
            for i, item in enumerate(items):
                if item.name in seen:
                    raise ConfigError(file, f"{kind}.{i}.name", f"{item.name!r} is also defined in {seen[item.name]}")
                seen[item.name] = file
                if kind == "checks" and (item.kind == "referential") != (item.references is not None):
                    raise ConfigError(file, f"{kind}.{i}.references", "required by, and only by, kind referential")
                if kind == "checks" and item.kind in ("referential", "after_birth", "before_death") \
                        and len(item.columns) != 1:
                    raise ConfigError(file, f"{kind}.{i}.columns", f"kind {item.kind} takes one column")
    return tables
