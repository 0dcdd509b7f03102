"""Bronze: land each hospital's files as received (strings) with lineage, once per file version.

The landing folder is organised `<landing>/<hospital_id>/<day>/<file>`. Each file is matched to its
entities by the hospital's source contract and fingerprinted; a file the ledger already holds (same
path, size and modification time, or same path and sha256) is skipped, so a re-run writes nothing
and a new day costs what its files cost; a file with the bytes of one landed under another name (sent
twice, or renamed after its ingest) is ledgered as a duplicate of it and not read again. New files
are parsed by their format's reader; good records are appended to `bronze.<entity>`, bad ones to
`ops.quarantine` with the reason, file and line, and `ops.ingest_ledger` gets one row per file. Before
the run ends it reads back what it wrote and checks, file by file, rows read = rows landed + rows
quarantined.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
from dataclasses import dataclass, replace
from functools import reduce

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import io, progress
from lakehouse.bronze import readers
from lakehouse.catalog import BRONZE, BRONZE_COLUMNS, INGEST_LEDGER, QUARANTINE, SOURCE_SYSTEM
from lakehouse.config import Settings
from lakehouse.errors import LakehouseError
from lakehouse.io import Written

LANDED, UNMATCHED, FAILED, UNBALANCED, DUPLICATE = "landed", "unmatched", "failed", "unbalanced", "duplicate"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class QuarantineThresholdExceeded(LakehouseError):
    """More of a hospital's rows went to quarantine than its contract allows (everything is still landed)."""

    exit_code = 3

    @property
    def advice(self) -> str:
        return ("read the reasons with `SELECT reason, count(*) FROM ops.quarantine GROUP BY reason`, then fix the "
                "hospital's export or its contract (`lakehouse validate-source --hospital H` profiles a dump); "
                "refine will not use the batch until ingest succeeds")


class ReconciliationError(LakehouseError):
    """What the run wrote does not add up to what it read."""

    exit_code = 4

    @property
    def advice(self) -> str:
        return ("run `lakehouse reconcile` to list every file whose rows do not add up; a file's Delta history "
                "(DESCRIBE HISTORY) shows which commit changed it")


@dataclass(frozen=True)
class LandingFile:
    path: str
    size: int
    modified_ms: int
    sha256: str
    hospital_id: str | None
    entities: tuple[str, ...]
    reason: str | None = None
    previous_batch: str | None = None
    duplicate_of: str | None = None  # a landed file with the same bytes under another name: not read again

    @property
    def entity_label(self) -> str | None:
        return ",".join(self.entities) or None


@dataclass(frozen=True)
class Group:
    """Files of one hospital read together: same format and entities (and, for CSV, the same header)."""

    hospital_id: str
    fmt: str
    entities: tuple[str, ...]
    files: tuple[LandingFile, ...]
    header: str = ""  # CSV: the header line its files share


@dataclass
class Parsed:
    """One entity's records from some groups, numbered (from `cached`), with each file's counts."""

    entity: str
    files: list[LandingFile]
    frame: DataFrame
    cached: DataFrame
    counts: dict[str, tuple[int, int]]  # file -> (rows read, rows quarantined)


@dataclass
class IngestResult:
    written: list[Written]
    ledger: list[tuple]
    files_skipped: int
    error: LakehouseError | None = None  # raised by the job after it has logged what it wrote

    def count(self, status: str) -> int:
        return sum(row[9] == status for row in self.ledger)

    @property
    def totals(self) -> dict[str, int]:
        return {"files_new": len(self.ledger), "files_skipped": self.files_skipped,
                "files_landed": self.count(LANDED), "files_failed": self.count(FAILED),
                "files_unmatched": self.count(UNMATCHED), "files_duplicate": self.count(DUPLICATE),
                "rows_read": sum(r[6] for r in self.ledger),
                "rows_landed": sum(r[7] for r in self.ledger), "rows_quarantined": sum(r[8] for r in self.ledger)}

    def summary(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.totals.items())


# --- what is new in the landing folder -----------------------------------------------------------

def list_files(spark: SparkSession, landing: str) -> list[tuple[str, int, int]]:
    """(path, size, modification ms) of every file under the landing folder, empty ones included (Spark's
    file sources skip zero-byte files, so Hadoop's FileSystem lists: one entry per file, never per row)."""
    fs, root = io.hadoop_path(spark, landing)
    found, listing = [], fs.listFiles(root, True)
    while listing.hasNext():
        status = listing.next()
        found.append((status.getPath().toString(), int(status.getLen()), int(status.getModificationTime())))
    return sorted(found)


def match_contract(settings: Settings, landing: str, path: str) -> tuple[str | None, tuple[str, ...], str | None]:
    """(hospital_id, entities, reason): which contract entities a landed file belongs to, if any."""
    parts = _relative(landing, path).split("/")
    hospital = parts[0] if len(parts) >= 2 else None
    contract = settings.sources.get(hospital or "")
    if contract is None:
        return hospital, (), f"no source contract for hospital folder {hospital!r}"
    name = parts[-1]
    entities = tuple(e for e, source in contract.entities.items() if fnmatch.fnmatch(name, source.pattern))
    if not entities:
        return hospital, (), f"file name {name!r} matches no entity pattern of {hospital}"
    return hospital, entities, None


def plan_files(spark: SparkSession, settings: Settings, landing: str) -> tuple[list[LandingFile], int]:
    """The files to ingest now, and how many are skipped as already in the ledger.

    A file with the path, size and modification time of a ledgered one is skipped without being read;
    the others are hashed on the executors and skipped if the ledger has the same path and sha256.
    Two Spark jobs: the ledger rows of the listed paths, and the hashes of the files not recognised.
    """
    listed = list_files(spark, landing)
    history: dict[str, list] = {}
    if listed and io.exists(spark, INGEST_LEDGER, settings.root):
        paths = spark.createDataFrame([(p,) for p, _, _ in listed], "path STRING")
        rows = (io.read(spark, INGEST_LEDGER, settings.root).join(F.broadcast(paths), "path")
                .select("path", "size", F.unix_millis("modified_at").alias("modified_ms"), "sha256", "batch_id",
                        "ingested_at").collect())  # the listed files' own ledger rows: as many as the listing
        for row in sorted(rows, key=lambda r: r.ingested_at):
            history.setdefault(row.path, []).append(row)
    unknown = [(p, size, ms) for p, size, ms in listed
               if not any(r.size == size and r.modified_ms == ms for r in history.get(p, []))]
    hashes = _hashes(spark, [p for p, size, _ in unknown if size > 0])
    landed = _landed_as(spark, settings, set(hashes.values()) - {EMPTY_SHA256})
    new, skipped = [], len(listed) - len(unknown)
    for path, size, ms in unknown:
        sha256 = hashes.get(path, EMPTY_SHA256)
        if any(r.sha256 == sha256 for r in history.get(path, [])):
            skipped += 1  # touched, but the same bytes
            continue
        hospital, entities, reason = match_contract(settings, landing, path)
        previous = history[path][0].batch_id if path in history else None
        twin = landed.get((hospital, sha256)) if entities and size > 0 else None
        if twin and twin[0] != path:  # sent again under another name, or renamed after its ingest
            new.append(LandingFile(path, size, ms, sha256, hospital, entities, reason, previous,
                                   f"same bytes as {_relative(landing, twin[0])} (batch {twin[1]})"))
            continue
        if entities and size > 0:
            landed.setdefault((hospital, sha256), (path, "this batch"))
        new.append(LandingFile(path, size, ms, sha256, hospital, entities, reason, previous))
    return new, skipped


def _landed_as(spark: SparkSession, settings: Settings, hashes: set[str]) -> dict[tuple, tuple[str, str]]:
    """(hospital, sha256) -> (path, batch) of the hospital's first landed file with those bytes, for the hashes of
    the files listed now (a row per hospital and hash at most: bounded by the listing). An MRN means something
    only within its hospital, so the same bytes from another hospital are not a duplicate."""
    if not hashes or not io.exists(spark, INGEST_LEDGER, settings.root):
        return {}
    wanted = spark.createDataFrame([(h,) for h in sorted(hashes)], "sha256 STRING")
    first = F.min_by(F.struct("path", "batch_id"), "ingested_at")
    rows = (io.read(spark, INGEST_LEDGER, settings.root).where(F.col("status") == LANDED)
            .join(F.broadcast(wanted), "sha256").groupBy("hospital_id", "sha256").agg(first.alias("first")).collect())
    return {(r.hospital_id, r.sha256): (r.first.path, r.first.batch_id) for r in rows}


def _relative(landing: str, path: str) -> str:
    return path.split(landing.rstrip("/").split("://")[-1], 1)[-1].strip("/")


def _hashes(spark: SparkSession, paths: list[str]) -> dict[str, str]:
    """sha256 of each file, computed on the executors (a file's bytes never reach the driver)."""
    if not paths:
        return {}
    rows = (spark.read.format("binaryFile").load(paths)
            .select("path", F.sha2("content", 256).alias("sha256")).collect())  # one row per file
    by_uri = {row.path: row.sha256 for row in rows}
    return {p: by_uri.get(p) or by_uri.get(_as_listed(p)) or EMPTY_SHA256 for p in paths}


def _as_listed(path: str) -> str:
    """binaryFile reports file:/x as file:///x."""
    return path.replace("file:/", "file:///", 1) if path.startswith("file:/") and not path.startswith("file:///") \
        else path


# --- reading ------------------------------------------------------------------------------------

def groups_of(spark: SparkSession, settings: Settings,
              files: list[LandingFile]) -> tuple[list[Group], list[tuple[LandingFile, str]]]:
    """Files read together: same hospital, format and entities, and for CSV the same header line (read on
    the driver, a few KiB per file), so a file whose columns changed is read on its own."""
    grouped: dict[tuple, list[LandingFile]] = {}
    failed = []
    for f in files:
        source = settings.sources[f.hospital_id].entities[f.entities[0]]
        header = ""
        if source.format == "csv":
            try:
                header = readers.first_line(spark, f.path, source.encoding)
            except Exception as err:  # e.g. not gzip at all
                failed.append((f, _reason(err)))
                continue
        grouped.setdefault((f.hospital_id, source.format, f.entities, header), []).append(f)
    groups = [Group(h, fmt, entities, tuple(members), header)
              for (h, fmt, entities, header), members in sorted(grouped.items())]
    return groups, failed


def entity_rows(spark: SparkSession, settings: Settings, group: Group, entity: str) -> DataFrame:
    """The group's records for one entity in one shape: bronze columns, `_extra` and what ingest needs.
    Records no entity took (invalid JSON, an unknown resourceType) go with the group's first entity."""
    contract = settings.sources[group.hospital_id]
    records = readers.parse(spark, group.fmt, {e: contract.entities[e] for e in group.entities},
                            [f.path for f in group.files])
    columns, extra = readers.project(records, group.fmt, contract.entities[entity])
    label = ",".join(group.entities)
    keep = (F.col("_entity") == entity) | (F.col("_entity").isNull() & F.lit(entity == group.entities[0]))
    return records.where(keep).select(
        *columns, extra.alias("_extra"), F.lit(group.hospital_id).alias("_hospital_id"), "_source_file", "_block",
        "_id", "_line_offset", "_source_line", "_drop", F.coalesce("_entity", F.lit(label)).alias("_entity"), "_error",
        "_raw")


def _parse(spark: SparkSession, settings: Settings, entity: str, groups: list[Group]) -> Parsed:
    """Parse and cache, in one pass over the files: an aggregate over the cached rows gives each file split's
    records (so they are numbered without reading the files again) and each file's records read and bad."""
    union = reduce(DataFrame.unionByName, [entity_rows(spark, settings, g, entity) for g in groups]).persist()
    kept = ~F.col("_drop")
    try:
        counted = (union.groupBy("_source_file", "_block")
                   .agg(F.min("_id").alias("_first_id"), F.count("*").alias("_n"),
                        F.count(F.when(kept, 1)).alias("read"), F.count(F.when(kept, F.col("_error"))).alias("bad"))
                   .collect())  # one row per file split
    except Exception:
        union.unpersist()
        raise
    splits = spark.createDataFrame([(r._source_file, r._block, r._first_id, r._n) for r in counted],
                                   "_source_file STRING, _block BIGINT, _first_id BIGINT, _n BIGINT")
    frame = readers.number(union, splits).where(kept).drop("_drop", "_block", "_id", "_line_offset")
    csv_files = [f.path for g in groups if g.fmt == "csv" for f in g.files]
    if csv_files:
        frame = readers.skip_blank_lines(spark, frame, readers.blank_line_skips(spark, csv_files))
    counts: dict[str, tuple[int, int]] = {}
    for r in counted:
        read, bad = counts.get(r._source_file, (0, 0))
        counts[r._source_file] = (read + r.read, bad + r.bad)
    return Parsed(entity, [f for g in groups for f in g.files], frame, union, counts)


def parse_entity(spark: SparkSession, settings: Settings, entity: str,
                 groups: list[Group]) -> tuple[list[Parsed], list[tuple[LandingFile, str]]]:
    """All of an entity's new files at once; if that fails, group by group, then file by file. A file that
    fails alone is returned with its reason (a corrupt gzip, a header without a mapped column, ...)."""
    try:
        return [_parse(spark, settings, entity, groups)], []
    except Exception as err:
        if len(groups) == 1 and len(groups[0].files) == 1:
            return [], [(groups[0].files[0], _reason(err))]
    parsed, failed = [], []
    for g in groups:
        if len(groups) > 1:
            try:
                parsed.append(_parse(spark, settings, entity, [g]))
                continue
            except Exception as err:
                if len(g.files) == 1:
                    failed.append((g.files[0], _reason(err)))
                    continue
        for f in g.files:
            try:
                parsed.append(_parse(spark, settings, entity, [replace(g, files=(f,))]))
            except Exception as err:
                failed.append((f, _reason(err)))
    return parsed, failed


def _reason(err: Exception) -> str:
    text = str(err).strip()
    for marker in ("Caused by: ", "Exception: "):  # the JVM's own message, not the Py4J stack
        if marker in text:
            text = text.split(marker, 1)[1]
    first = text.splitlines()[0] if text else type(err).__name__
    return f"unreadable: {first}"[:1000]


# --- writing ------------------------------------------------------------------------------------

def bronze_rows(parsed: Parsed, batch_id: str) -> DataFrame:
    entity = parsed.entity
    return parsed.frame.where(F.col("_error").isNull()).select(
        *BRONZE_COLUMNS[entity], "_hospital_id", F.lit(SOURCE_SYSTEM[entity]).alias("_source_system"), "_source_file",
        "_source_line", F.lit(batch_id).alias("_batch_id"), F.current_timestamp().alias("_ingested_at"),
        record_hash(BRONZE_COLUMNS[entity]).alias("_record_hash"), "_extra")


def quarantine_rows(parsed: Parsed, batch_id: str) -> DataFrame:
    return parsed.frame.where(F.col("_error").isNotNull()).select(
        F.lit("bronze").alias("layer"), F.lit("ingest").alias("stage"), F.col("_hospital_id").alias("hospital_id"),
        F.col("_entity").alias("entity"), F.col("_source_file").alias("source_file"),
        F.col("_source_line").alias("source_line"), F.col("_raw").alias("raw"), F.col("_error").alias("reason"),
        F.lit(batch_id).alias("batch_id"), F.current_timestamp().alias("quarantined_at"))


def record_hash(columns: tuple[str, ...]) -> Column:
    return F.sha2(F.concat_ws("\u241f", *[F.coalesce(F.col(f"`{c}`"), F.lit("\u2400")) for c in columns]), 256)


def rows_per_file(spark: SparkSession, settings: Settings, batch_id: str | None = None) -> DataFrame:
    """(path, batch_id, bronze_rows, quarantine_rows) as the tables hold them, over every bronze table and
    ops.quarantine; only `batch_id`'s rows when given (Delta skips the other batches' files by statistics)."""
    def of_batch(frame: DataFrame, column: str) -> DataFrame:
        return frame if batch_id is None else frame.where(F.col(column) == batch_id)

    parts = [of_batch(io.read(spark, ref, settings.root), "_batch_id")
             .select(F.col("_source_file").alias("path"), F.col("_batch_id").alias("batch_id"),
                     F.lit(1).alias("bronze_rows"), F.lit(0).alias("quarantine_rows"))
             for ref in BRONZE.values() if io.exists(spark, ref, settings.root)]
    if io.exists(spark, QUARANTINE, settings.root):
        parts.append(of_batch(io.read(spark, QUARANTINE, settings.root), "batch_id").where(F.col("layer") == "bronze")
                     .select(F.col("source_file").alias("path"), "batch_id", F.lit(0).alias("bronze_rows"),
                             F.lit(1).alias("quarantine_rows")))
    if not parts:
        return spark.createDataFrame([], "path STRING, batch_id STRING, bronze_rows BIGINT, quarantine_rows BIGINT")
    return (reduce(DataFrame.unionByName, parts).groupBy("path", "batch_id")
            .agg(F.sum("bronze_rows").cast("bigint").alias("bronze_rows"),
                 F.sum("quarantine_rows").cast("bigint").alias("quarantine_rows")))


def ingest(spark: SparkSession, settings: Settings, landing: str, batch_id: str) -> IngestResult:
    """Land every new file, quarantine bad records, ledger every file, and check that it all adds up."""
    new, skipped = plan_files(spark, settings, landing)
    ledger: list[tuple] = [_ledger_row(f, batch_id, 0, 0, 0, UNMATCHED, f.reason) for f in new if not f.entities]
    ledger += [_ledger_row(f, batch_id, 0, 0, 0, DUPLICATE, f.duplicate_of) for f in new if f.duplicate_of]
    new = [f for f in new if not f.duplicate_of]
    ledger += [_ledger_row(f, batch_id, 0, 0, 0, FAILED, "empty file (0 bytes)") for f in new
               if f.entities and f.size == 0]
    groups, unreadable = groups_of(spark, settings, [f for f in new if f.entities and f.size > 0])
    parsed: list[Parsed] = []
    failed: dict[str, tuple[LandingFile, str]] = {f.path: (f, reason) for f, reason in unreadable}
    written: list[Written] = []
    try:
        entities = sorted({e for g in groups for e in g.entities})
        files_total, files_done, rows_read = len({f.path for g in groups for f in g.files}), set(), 0
        for entity in entities:
            mine = [g for g in groups if entity in g.entities]
            done, bad_files = parse_entity(spark, settings, entity, mine)
            parsed += done
            failed.update({f.path: (f, reason) for f, reason in bad_files})
            files_done |= {f.path for g in mine for f in g.files}
            rows_read += sum(read for p in done for read, _ in p.counts.values())
            progress.step("parse", entity, len(files_done), files_total, "files", rows_read)
        for entity in sorted({p.entity for p in parsed}):
            frames = [bronze_rows(p, batch_id) for p in parsed if p.entity == entity]
            written.append(io.append(spark, reduce(DataFrame.unionByName, frames), BRONZE[entity], settings.root))
        bad = [quarantine_rows(p, batch_id) for p in parsed if any(n for _, n in p.counts.values())]
        if bad:
            written.append(io.append(spark, reduce(DataFrame.unionByName, bad), QUARANTINE, settings.root))
        actual = ({row.path: (row.bronze_rows, row.quarantine_rows)  # read back: one row per file
                   for row in rows_per_file(spark, settings, batch_id).collect()} if parsed else {})
    finally:
        for p in parsed:
            p.cached.unpersist()
    ledger += [_ledger_row(f, batch_id, 0, 0, 0, FAILED, reason) for f, reason in failed.values()]
    expected: dict[str, list[int]] = {}
    for p in parsed:
        for f in p.files:
            read, bad_rows = p.counts.get(f.path, (0, 0))
            expected.setdefault(f.path, [0, 0])
            expected[f.path][0] += read
            expected[f.path][1] += bad_rows
    landed_files = {f.path: f for p in parsed for f in p.files if f.path not in failed}
    unbalanced = []
    for path, f in sorted(landed_files.items()):
        read, bad_rows = expected[path]
        landed, quarantined = actual.get(path, (0, 0))
        balanced = read == landed + quarantined and quarantined == bad_rows
        notes = [f"{quarantined} rows quarantined"] if quarantined else []
        if f.previous_batch:
            notes.append(f"new version of a file first seen in batch {f.previous_batch}")
        if not balanced:
            unbalanced.append(path)
            notes.insert(0, f"read {read} but wrote {landed} to bronze and {quarantined} to quarantine "
                            f"(expected {bad_rows})")
        ledger.append(_ledger_row(f, batch_id, read, landed, quarantined, LANDED if balanced else UNBALANCED,
                                  "; ".join(notes) or None))
    result = IngestResult(written, ledger, skipped)
    if ledger:
        frame = spark.createDataFrame(ledger, INGEST_LEDGER.schema).withColumn("ingested_at", F.current_timestamp())
        written.append(io.append(spark, frame, INGEST_LEDGER, settings.root, merge_schema=True))
    if unbalanced:
        result.error = ReconciliationError(f"{len(unbalanced)} files do not reconcile ({result.summary()}): "
                                           + ", ".join(unbalanced[:5]))
    else:
        result.error = _over_threshold(settings, ledger, result)
    return result


def _over_threshold(settings: Settings, ledger: list[tuple], result: IngestResult) -> LakehouseError | None:
    over = []
    for hospital_id in sorted({row[3] for row in ledger if row[3] in settings.sources}):
        read = sum(row[6] for row in ledger if row[3] == hospital_id)
        quarantined = sum(row[8] for row in ledger if row[3] == hospital_id)
        allowed = settings.sources[hospital_id].quarantine_threshold
        if read and quarantined / read > allowed:
            over.append(f"{hospital_id} {quarantined}/{read} rows ({quarantined / read:.2%} > {allowed:.2%})")
    if not over:
        return None
    return QuarantineThresholdExceeded(
            f"quarantine over the contract's threshold for {'; '.join(over)}; everything was landed and ledgered, "
        f"see ops.quarantine ({result.summary()})")


def _ledger_row(f: LandingFile, batch_id: str, read: int, landed: int, quarantined: int, status: str,
                reason: str | None) -> tuple:
    return (f.path, f.size, f.sha256, f.hospital_id, f.entity_label, batch_id, read, landed, quarantined, status,
            reason, None, _timestamp(f.modified_ms))


def _timestamp(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
