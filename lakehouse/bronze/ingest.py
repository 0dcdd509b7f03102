"""Bronze: land each hospital's files as received (strings) with lineage, once per file version.

The landing folder is organised `<landing>/<hospital_id>/<day>/<file>`. Each file is matched to an
entity by its hospital's source contract, fingerprinted (sha256, computed on the executors), and
skipped when the ledger already holds the same path and checksum. New files are read with the
contract's encoding and delimiter, their columns renamed to bronze names (unmapped columns are kept
in `_extra`), and appended; `ops.ingest_ledger` gets one row per file.
"""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass
from functools import reduce

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lakehouse import io
from lakehouse.catalog import BRONZE, BRONZE_COLUMNS, INGEST_LEDGER, SOURCE_SYSTEM
from lakehouse.config import EntitySource, Settings
from lakehouse.io import Written

BOM = "\ufeff"
LANDED, SKIPPED, UNMATCHED, FAILED = "landed", "skipped", "unmatched", "failed"


@dataclass(frozen=True)
class LandingFile:
    path: str
    size: int
    sha256: str
    hospital_id: str | None
    entity: str | None
    reason: str | None = None


EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def list_files(spark: SparkSession, landing: str) -> list[tuple[str, int]]:
    """Every file under the landing folder with its size, empty ones included (Spark's file sources skip
    zero-byte files, so the listing asks Hadoop's FileSystem directly: one entry per file, never per row)."""
    fs, root = io.hadoop_path(spark, landing)
    found, listing = [], fs.listFiles(root, True)
    while listing.hasNext():
        status = listing.next()
        found.append((status.getPath().toString(), int(status.getLen())))
    return sorted(found)


def list_landing(spark: SparkSession, landing: str) -> DataFrame:
    """Every file with its size and sha256; contents are hashed on the executors."""
    files = list_files(spark, landing)
    listed = spark.createDataFrame(files, "path STRING, size BIGINT")
    non_empty = [path for path, size in files if size > 0]
    if not non_empty:
        return listed.withColumn("sha256", F.lit(EMPTY_SHA256))
    hashes = (spark.read.format("binaryFile").load(non_empty)
              .select(F.col("path").alias("_p"), F.sha2("content", 256).alias("sha256")))
    return (listed.join(hashes, listed.path == hashes._p, "left")
            .select("path", "size", F.coalesce("sha256", F.lit(EMPTY_SHA256)).alias("sha256")))


def match_contract(settings: Settings, landing: str, path: str) -> tuple[str | None, str | None, str | None]:
    """(hospital_id, entity, reason): which contract entity a landed file belongs to, if any."""
    relative = path.split(landing.rstrip("/").split("://")[-1], 1)[-1].strip("/")
    parts = relative.split("/")
    hospital = parts[0] if len(parts) >= 2 else None
    contract = settings.sources.get(hospital or "")
    if contract is None:
        return hospital, None, f"no source contract for hospital folder {hospital!r}"
    name = parts[-1]
    for entity, source in contract.entities.items():
        if fnmatch.fnmatch(name, source.pattern):
            return hospital, entity, None
    return hospital, None, f"file name {name!r} matches no entity pattern of {hospital}"


def plan_files(spark: SparkSession, settings: Settings, landing: str) -> tuple[list[LandingFile], list[LandingFile]]:
    """Split the landing folder into files to ingest and files already in the ledger (same checksum)."""
    listed = list_landing(spark, landing)
    # any file version already recorded (landed, or refused for a reason that the same bytes would repeat)
    ledger = io.read_or_empty(spark, INGEST_LEDGER, settings.root)
    seen = ledger.select("path", "sha256").distinct().withColumn("_seen", F.lit(True))
    rows = listed.join(seen, ["path", "sha256"], "left").collect()  # one row per file, not per record
    new, skipped = [], []
    for row in sorted(rows, key=lambda r: r.path):
        hospital, entity, reason = match_contract(settings, landing, row.path)
        item = LandingFile(row.path, row.size, row.sha256, hospital, entity, reason)
        (skipped if row._seen else new).append(item)
    return new, skipped


def read_source(spark: SparkSession, source: EntitySource, paths: list[str]) -> DataFrame:
    return (spark.read
            .option("header", str(source.header).lower())
            .option("sep", source.delimiter)
            .option("encoding", source.encoding)
            .option("inferSchema", "false")
            .option("mode", "PERMISSIVE")
            .option("enforceSchema", "false")  # a file whose header differs fails, and is then read on its own
            .csv(paths)
            .select("*", F.col("_metadata.file_path").alias("_source_file")))


def to_bronze(raw: DataFrame, source: EntitySource, entity: str, hospital_id: str, batch_id: str) -> DataFrame:
    """Rename to bronze columns, keep unmapped columns in `_extra`, and add lineage."""
    raw = raw.toDF(*[c.lstrip(BOM) for c in raw.columns])
    vendor_to_bronze = {vendor: bronze for bronze, vendor in source.columns.items()}
    missing = [v for v in vendor_to_bronze if v not in raw.columns]
    if missing:
        raise ValueError(f"columns missing from the file: {missing}")
    unmapped = [c for c in raw.columns if c not in vendor_to_bronze and c != "_source_file"]
    extra = (F.map_from_arrays(F.array(*[F.lit(c) for c in unmapped]), F.array(*[F.col(f"`{c}`") for c in unmapped]))
             if unmapped else F.create_map().cast("map<string,string>"))
    columns = [F.col(f"`{source.columns[c]}`").alias(c) for c in BRONZE_COLUMNS[entity]]
    line_order = Window.partitionBy("_source_file").orderBy("_row_id")
    header_lines = 1 if source.header else 0
    return (raw
            .withColumn("_row_id", F.monotonically_increasing_id())
            .select(*columns,
                    F.lit(hospital_id).alias("_hospital_id"),
                    F.lit(SOURCE_SYSTEM[entity]).alias("_source_system"),
                    F.col("_source_file"),
                    (F.row_number().over(line_order) + header_lines).cast("bigint").alias("_source_line"),
                    F.lit(batch_id).alias("_batch_id"),
                    F.current_timestamp().alias("_ingested_at"),
                    record_hash(BRONZE_COLUMNS[entity]).alias("_record_hash"),
                    extra.alias("_extra")))


def record_hash(columns: tuple[str, ...]) -> Column:
    return F.sha2(F.concat_ws("\u241f", *[F.coalesce(F.col(f"`{c}`"), F.lit("\u2400")) for c in columns]), 256)


def ingest(spark: SparkSession, settings: Settings, landing: str, batch_id: str) -> tuple[list[Written], dict]:
    """Land every new file; return what was written and counts for the run summary."""
    new, skipped = plan_files(spark, settings, landing)
    ledger_rows = [_ledger_row(f, batch_id, 0, 0, UNMATCHED, f.reason) for f in new if f.entity is None]
    ledger_rows += [_ledger_row(f, batch_id, 0, 0, FAILED, "empty file (0 bytes)") for f in new
                    if f.entity is not None and f.size == 0]
    readable = [f for f in new if f.size > 0 and f.entity is not None]
    written: dict[str, Written] = {}
    groups: dict[tuple[str, str], list[LandingFile]] = {}
    for f in readable:
        groups.setdefault((f.hospital_id, f.entity), []).append(f)
    by_entity: dict[str, list[tuple[DataFrame, list[LandingFile]]]] = {}
    for (hospital_id, entity), files in sorted(groups.items()):
        try:
            by_entity.setdefault(entity, []).append(
                (_prepare(spark, settings, hospital_id, entity, files, batch_id), files))
        except Exception:  # e.g. the header cannot be read: sort the group out file by file
            good, failed = _one_by_one(spark, settings, entity, [(None, files)], batch_id)
            by_entity.setdefault(entity, []).extend(good)
            ledger_rows.extend(failed)
    for entity, parts in sorted(by_entity.items()):
        try:
            landed = _land(spark, settings, entity, parts)
        except Exception:  # some file cannot be read together with the others: find it, land the rest
            parts, failed = _one_by_one(spark, settings, entity, parts, batch_id)
            ledger_rows.extend(failed)
            landed = _land(spark, settings, entity, parts) if parts else None
        if landed is not None:
            written[entity], per_file = landed
            ledger_rows.extend(_ledger_row(f, batch_id, per_file.get(f.path, 0), per_file.get(f.path, 0), LANDED,
                                           None) for _, files in parts for f in files)
    if ledger_rows:
        ledger = (spark.createDataFrame(ledger_rows, INGEST_LEDGER.schema)
                  .withColumn("ingested_at", F.current_timestamp()))
        written["_ledger"] = io.append(spark, ledger, INGEST_LEDGER, settings.root)
    counts = {"files_new": len(new), "files_skipped": len(skipped),
              "files_failed": sum(r[9] in (FAILED, UNMATCHED) for r in ledger_rows),
              "rows_landed": sum(r[7] for r in ledger_rows)}
    return list(written.values()), counts


def _prepare(spark: SparkSession, settings: Settings, hospital_id: str, entity: str, files: list[LandingFile],
             batch_id: str) -> DataFrame:
    source = settings.sources[hospital_id].entities[entity]
    return to_bronze(read_source(spark, source, [f.path for f in files]), source, entity, hospital_id, batch_id)


def _land(spark: SparkSession, settings: Settings, entity: str,
          parts: list[tuple[DataFrame, list[LandingFile]]]) -> tuple[Written, dict[str, int]]:
    """Append all parts in one Delta commit; return it and the rows landed per file."""
    bronze = reduce(DataFrame.unionByName, [frame for frame, _ in parts]).persist()
    try:
        per_file = dict(bronze.groupBy("_source_file").count().collect())  # one row per file
        return io.append(spark, bronze, BRONZE[entity], settings.root), per_file
    finally:
        bronze.unpersist()


def _one_by_one(spark: SparkSession, settings: Settings, entity: str, parts, batch_id: str):
    """Read each file alone: those that fail get a ledger row with the reason, the others go on."""
    good, failed = [], []
    for _, files in parts:
        for f in files:
            try:
                frame = _prepare(spark, settings, f.hospital_id, entity, [f], batch_id)
                frame.select("_record_hash").count()  # forces decompression and parsing of the whole file
                good.append((frame, [f]))
            except Exception as err:
                failed.append(_ledger_row(f, batch_id, 0, 0, FAILED, _reason(err)))
    return good, failed


def _reason(err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"{type(err).__name__}: {text}"[:1000]


def _ledger_row(f: LandingFile, batch_id: str, read: int, landed: int, status: str, reason: str | None) -> tuple:
    return (f.path, f.size, f.sha256, f.hospital_id, f.entity, batch_id, read, landed, read - landed, status,
            reason, None)
