"""`lakehouse erase --person KEY --reason TEXT`: one person out of every layer (PIPL's right to deletion, a
withdrawn consent).

The person's hospital records are found in silver (person_link and person: their patient keys) and the vault
(their MRNs, decrypted in the job, never written). Then, table by table under the root: rows whose person_key is
the person's (silver, gold: timelines, cohorts, features, predictions), whose patient_key is one of theirs (the
vault, the person index), bronze rows whose (hospital, MRN) is one of theirs (found by the patient key the
refine computes from them), and quarantined records whose raw text names one of their MRNs or keys. Each table
loses them in one Delta MERGE ... DELETE whose source is a DataFrame: no key or MRN is ever a literal of a
predicate, which Delta would keep in its commit log.

A DELETE leaves the rows in the table's earlier files (and change-data files) until VACUUM removes them, which it
does once `erasure.retention_hours` have passed (Delta's own 7 days by default: earlier versions, time travel and
`lakehouse rollback` need them until then): `lakehouse vacuum`, run daily, completes every erasure. The audit log
keeps that an erasure happened, why, and how many rows of which tables went, never whose; `lakehouse rollback`
refuses to restore a table across an erasure. Not in reach of the lakehouse, and so printed for the operator: the
landing files the person's rows came from, and models already trained on them (MLflow).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import access, io, secrets
from lakehouse.catalog import BRONZE, PERSON, PERSON_EVENT, PERSON_LINK, QUARANTINE, TableRef
from lakehouse.config import Settings
from lakehouse.errors import LakehouseError, UsageError
from lakehouse.runlog import ERASE_JOB, ERASE_RUN, JobRun
from lakehouse.services.audit import AuditLog
from lakehouse.silver import vault
from lakehouse.silver.refine import patient_key, resolve_references

RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"
VACUUM_LOGGING = "spark.databricks.delta.vacuum.logging.enabled"
DELTA_DEFAULT_RETENTION_HOURS = 168


@dataclass
class Erasure:
    records: int  # the person's hospital patient records
    deleted: dict[str, int] = field(default_factory=dict)  # table -> rows deleted
    landing_files: list[str] = field(default_factory=list)  # files the person's bronze rows came from
    unlinked: list[str] = field(default_factory=list)  # tables where other persons' rows no longer point at them
    retention_hours: int = DELTA_DEFAULT_RETENTION_HOURS
    run_id: str = ""


def erase(spark: SparkSession, settings: Settings, person_key: str, reason: str) -> Erasure:
    if not reason.strip():
        raise UsageError("an erasure needs a reason (--reason), recorded in ops.audit_log")
    started = time.monotonic()
    key, vault_key = secrets.pseudonym_key(settings), secrets.vault_key(settings)
    run_id = f"{ERASE_RUN}{uuid.uuid4().hex[:16]}"  # known as an erasure by its commits' tag alone
    with JobRun(spark, settings, ERASE_JOB, run_id=run_id) as run:  # admin only, one at a time, commits tagged
        person = spark.createDataFrame([(person_key,)], "person_key STRING")
        records = _records(spark, settings, person)
        if not records:
            raise UsageError("no such person in silver.person or silver.person_link (nothing was changed)")
        keys = spark.createDataFrame([(k,) for k in records], "patient_key STRING")
        mrns = (vault.plaintext(spark, settings.root, vault_key).join(keys, "patient_key")
                .select("hospital_id", "mrn").where(F.col("mrn").isNotNull()).cache())
        anywhere = F.lit(None).cast("string").alias("hospital_id")
        tokens = (mrns.select("hospital_id", F.col("mrn").alias("token"))  # an MRN only within its hospital
                  .unionByName(keys.select(anywhere, F.col("patient_key").alias("token")))
                  .unionByName(person.select(anywhere, F.col("person_key").alias("token"))))
        result = Erasure(len(records), run_id=run.run_id,
                         retention_hours=settings.main.erasure.retention_hours)
        ids = _person_ids(spark, settings, records)
        files: set[str] = set()
        for ref in io.list_tables(spark, settings.root):
            if ref.layer == "ops" and ref.qualified != QUARANTINE.qualified:
                continue  # the platform's records: runs, ledgers, results, the audit log; no person's data
            gone = _erase_from(spark, settings, ref, key, person, keys, tokens, files)
            if gone:
                result.deleted[ref.qualified] = gone
                run.wrote(io.describe(spark, ref, settings.root))
        # other persons' rows that point at them: the strongest partner a record was compared with, the person
        # id a link event moved a record from or to
        for ref, references in ((PERSON_LINK, {"matched_patient_key": records}),
                                (PERSON_EVENT, {"person_id": ids, "other_person_id": ids})):
            if io.exists(spark, ref, settings.root) and _unlink(spark, settings, ref, references):
                result.unlinked.append(ref.qualified)
                run.wrote(io.describe(spark, ref, settings.root))
        mrns.unpersist()
        result.landing_files = sorted(files)
        run.note(f"erased one person: {sum(result.deleted.values())} rows of {len(result.deleted)} tables, "
                 f"{result.records} hospital records; earlier versions hold them until `lakehouse vacuum` runs "
                 f"{result.retention_hours} h from now")
    _audit(settings, result, reason, time.monotonic() - started)
    return result


def _records(spark: SparkSession, settings: Settings, person: DataFrame) -> list[str]:
    """The person's patient keys (a handful: their records at each hospital)."""
    found = set()
    for ref in (PERSON_LINK, PERSON):
        if io.exists(spark, ref, settings.root):
            found |= {r.patient_key for r in io.read(spark, ref, settings.root).join(person, "person_key")
                      .select("patient_key").distinct().collect()}
    return sorted(found)


def _person_ids(spark: SparkSession, settings: Settings, records: list[str]) -> list[str]:
    """The person index's ids their records hold now (person_link is rewritten by every link run)."""
    if not io.exists(spark, PERSON_LINK, settings.root):
        return []
    return sorted({r.person_id for r in io.read(spark, PERSON_LINK, settings.root)
                   .where(F.col("patient_key").isin(records)).select("person_id").distinct().collect()})


def _unlink(spark: SparkSession, settings: Settings, ref: TableRef, references: dict[str, list[str]]) -> bool:
    """Null the columns that name the erased person's records or ids in other persons' rows; whether any row
    changed. A `MERGE ... UPDATE` from a DataFrame of the values, as the deletes are: an UPDATE's predicate would
    keep them as literals in the Delta log."""
    changed = False
    for column, values in references.items():
        if not values:
            continue
        named = spark.createDataFrame([(v,) for v in values], "value STRING")
        table = io.read(spark, ref, settings.root)
        if table.join(named, table[column] == named["value"], "left_semi").isEmpty():
            continue
        (DeltaTable.forPath(spark, ref.path(settings.root)).alias("t")
         .merge(F.broadcast(named.alias("s")), f"t.{column} = s.value")
         .whenMatchedUpdate(set={column: "CAST(NULL AS STRING)"}).execute())
        changed = True
    return changed


def _erase_from(spark: SparkSession, settings: Settings, ref: TableRef, key: bytes, person: DataFrame,
                keys: DataFrame, tokens: DataFrame, files: set[str]) -> int:
    """Delete the person's rows from one table; the number deleted."""
    table = io.read(spark, ref, settings.root)
    columns = set(table.columns)
    if "person_key" in columns:
        source, condition = person, "t.person_key = s.person_key"
    elif "patient_key" in columns:
        source, condition = keys, "t.patient_key = s.patient_key"
    elif ref.layer == "bronze" and ref.name in BRONZE:
        rows = resolve_references(table).withColumn(
            "patient_key", patient_key(key, F.col("_hospital_id"), F.col("mrn")))
        source = (rows.join(keys, "patient_key").select("_source_file", "_source_line", "_batch_id", "_record_hash")
                  .distinct().cache())  # a file re-sent under its name has other rows at the same lines
        files |= {r._source_file for r in source.select("_source_file").distinct().collect()}
        condition = ("t._source_file = s._source_file AND t._source_line = s._source_line "
                     "AND t._batch_id = s._batch_id AND t._record_hash = s._record_hash")
    elif ref.qualified == QUARANTINE.qualified:
        source = tokens
        condition = ("(s.hospital_id IS NULL OR t.hospital_id = s.hospital_id) AND instr(t.raw, s.token) > 0 AND "
                     "t.raw RLIKE concat('(^|[^0-9A-Za-z])\\\\Q', s.token, '\\\\E([^0-9A-Za-z]|$)')")  # whole tokens
    else:
        return 0
    before = io.describe(spark, ref, settings.root).rows
    (DeltaTable.forPath(spark, ref.path(settings.root)).alias("t")
     .merge(F.broadcast(source.alias("s")), condition).whenMatchedDelete().execute())
    if ref.layer == "bronze":
        source.unpersist()
    return before - io.describe(spark, ref, settings.root).rows


def _vacuum(spark: SparkSession, settings: Settings, refs: list[TableRef], hours: int, lite: bool) -> None:
    """VACUUM the tables with `hours` retention (below Delta's 7 days its safety check is lifted for the call:
    the configuration says so, and a reader of a version that old loses it). LITE finds the files to delete in
    the log (those removed by commits older than the retention: what a DELETE or MERGE left behind) instead of
    listing every folder, ~7 s a table here against ~60 s."""
    previous = {name: spark.conf.get(name, "true") for name in (RETENTION_CHECK, VACUUM_LOGGING)}
    if hours < DELTA_DEFAULT_RETENTION_HOURS:
        spark.conf.set(RETENTION_CHECK, "false")
    spark.conf.set(VACUUM_LOGGING, "false")  # no VACUUM START/END commits: a new version would look like new data
    try:
        for ref in refs:
            spark.sql(f"VACUUM delta.`{ref.path(settings.root)}` {'LITE ' if lite else ''}RETAIN {hours} HOURS")
    finally:
        for name, value in previous.items():
            spark.conf.set(name, value)


def vacuum(spark: SparkSession, settings: Settings, tables: list[str] | None = None, full: bool = False) -> list[str]:
    """`lakehouse vacuum`: the tables (default: every table under the root) with `erasure.retention_hours`; LITE
    unless `full` (a full listing also deletes files no commit ever added, left by killed writes)."""
    found = {ref.qualified: ref for ref in io.list_tables(spark, settings.root)}
    unknown = sorted(set(tables or []) - set(found))
    if unknown:
        raise UsageError(f"no table {', '.join(unknown)} under {settings.root}")
    refs = [found[t] for t in (tables or sorted(found))]
    hours = settings.main.erasure.retention_hours
    with JobRun(spark, settings, "vacuum") as run:
        _vacuum(spark, settings, refs, hours, lite=not full)
        run.note(f"vacuumed {len(refs)} tables ({'full' if full else 'lite'}) with {hours} h retention")
    return [r.qualified for r in refs]


def _audit(settings: Settings, result: Erasure, reason: str, seconds: float) -> None:
    """The erasure's row of ops.audit_log: that it happened, why, what it removed; never whose."""
    who = access.current(settings)
    log = AuditLog(settings.root, flush_seconds=60, writer_kind="erase")
    appended = log.write(
        actor=who.name, role=who.role, action="erase", target=f"one person (key withheld), run {result.run_id}",
        tables=sorted(result.deleted), versions={}, rows=sum(result.deleted.values()), purpose=reason, status=0,
        duration_ms=seconds * 1000,
        outcome=f"ok: {result.records} hospital records; earlier versions keep them until vacuumed after "
                f"{result.retention_hours} h; {len(result.landing_files)} landing files still hold their rows")
    if not appended:
        raise LakehouseError(f"the erasure (run {result.run_id}) is done but its row could not be appended to "
                             "ops.audit_log (see the log above): record it by hand")
