"""Delta reads and writes through a few named modes: append, merge by key, overwrite.

Every write registers the table in the session catalog as `<layer>.<name>` and returns what it did
(table, Delta version, rows now in the table) for the run summary.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import NamedTuple

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import chaos, progress
from lakehouse.catalog import LAYERS, TableRef


@dataclass(frozen=True)
class Written:
    table: str
    version: int
    rows: int


def exists(spark: SparkSession, ref: TableRef, root: str) -> bool:
    return DeltaTable.isDeltaTable(spark, ref.path(root))


def read(spark: SparkSession, ref: TableRef, root: str, version: int | None = None) -> DataFrame:
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(ref.path(root))


def read_or_empty(spark: SparkSession, ref: TableRef, root: str) -> DataFrame:
    if exists(spark, ref, root):
        return read(spark, ref, root)
    return spark.createDataFrame([], ref.schema)


class Head(NamedTuple):
    """A table's latest commit."""

    version: int
    time: dt.datetime  # UTC, naive
    operation: str


COMMIT_FILE = re.compile(r"\d{20}\.json")


def head(spark: SparkSession, ref: TableRef, root: str) -> Head | None:
    """The latest commit, from the newest commit file of the table's log: a listing and one small read, no
    Spark job (`DeltaTable.history(1)` runs one, ~0.5 s here, and every write and status line asks)."""
    fs, log = hadoop_path(spark, f"{ref.path(root)}/_delta_log")
    if not fs.exists(log):
        return None
    commits = [name for name in (s.getPath().getName() for s in fs.listStatus(log)) if COMMIT_FILE.fullmatch(name)]
    if not commits:
        return None
    newest = max(commits)
    info = {}
    for line in read_small_text(spark, f"{ref.path(root)}/_delta_log/{newest}").splitlines():
        action = json.loads(line)
        if "commitInfo" in action:
            info = action["commitInfo"]
    when = dt.datetime.fromtimestamp(info.get("timestamp", 0) / 1000, dt.UTC).replace(tzinfo=None)
    return Head(int(newest[:20]), when, info.get("operation", "?"))


def latest_version(spark: SparkSession, ref: TableRef, root: str) -> int | None:
    found = head(spark, ref, root)
    return found.version if found else None


def describe(spark: SparkSession, ref: TableRef, root: str) -> Written:
    """The table's current version and row count: the count Delta recorded for that version when it has one
    (no Spark job), else a count (answered from file statistics, but a Spark job: ~0.5 s here, per write)."""
    version = latest_version(spark, ref, root)
    rows = recorded_rows(spark, ref, root, version) if version is not None else None
    return Written(ref.qualified, version, rows if rows is not None else read(spark, ref, root).count())


def recorded_rows(spark: SparkSession, ref: TableRef, root: str, version: int) -> int | None:
    """Rows of `version` as Delta recorded them in its checksum file (every live file with its statistics, less
    the rows deletion vectors remove), or None when that version has no checksum with files and statistics."""
    fs, checksum = hadoop_path(spark, f"{ref.path(root)}/_delta_log/{version:020d}.crc")
    if not fs.exists(checksum):
        return None
    files = json.loads(read_small_text(spark, str(checksum.toString()))).get("allFiles")
    try:
        return sum(json.loads(f["stats"])["numRecords"] - (f.get("deletionVector") or {}).get("cardinality", 0)
                   for f in files)
    except (TypeError, KeyError, ValueError):  # no file list, or a file without statistics
        return None


def files_scanned(df: DataFrame) -> int:
    """Files the scans of `df`'s last execution read, after Delta's data skipping (run an action first)."""
    def walk(node) -> int:
        name = node.getClass().getSimpleName()
        if name == "AdaptiveSparkPlanExec":
            return walk(node.executedPlan())
        if name.endswith("QueryStageExec"):
            return walk(node.plan())
        metrics = node.metrics()
        total = metrics.apply("numFiles").value() if metrics.contains("numFiles") else 0
        children = node.children()
        return total + sum(walk(children.apply(i)) for i in range(children.size()))

    return walk(df._jdf.queryExecution().executedPlan())  # noqa: SLF001


_REGISTERED: set[tuple[str, str, str]] = set()  # (Spark application, table, location) registered by this process


def register(spark: SparkSession, ref: TableRef, root: str) -> None:
    """Name the table in the session catalog (once per session and location: it costs two catalog calls)."""
    key = _registration(spark, ref, root)
    if key in _REGISTERED:
        return
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {ref.layer}")
    spark.sql(f"CREATE TABLE IF NOT EXISTS {ref.qualified} USING DELTA LOCATION '{ref.path(root)}'")
    _REGISTERED.add(key)


def _registration(spark: SparkSession, ref: TableRef, root: str) -> tuple[str, str, str]:
    return spark.sparkContext.applicationId, ref.qualified, ref.path(root)


def hadoop_path(spark: SparkSession, path: str):
    """(FileSystem, Path) of Hadoop for any URI the session understands: the only URI-neutral lister."""
    jvm_path = spark.sparkContext._jvm.org.apache.hadoop.fs.Path(path)  # noqa: SLF001
    return jvm_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), jvm_path  # noqa: SLF001


def read_bytes(spark: SparkSession, path: str, limit: int | None = None, decompress: bool = False) -> bytes:
    """A small file's bytes (at most `limit`; with `decompress`, decompressed by its suffix as Spark would)
    through Hadoop, any URI the session understands, on the driver: not a Spark job."""
    jvm, conf = spark.sparkContext._jvm, spark.sparkContext._jsc.hadoopConfiguration()  # noqa: SLF001
    fs, jvm_path = hadoop_path(spark, path)
    codec = jvm.org.apache.hadoop.io.compress.CompressionCodecFactory(conf).getCodec(jvm_path) if decompress else None
    stream = fs.open(jvm_path)
    try:
        if codec is not None:
            stream = codec.createInputStream(stream)
        if limit is not None:
            stream = jvm.org.apache.commons.io.input.BoundedInputStream(stream, limit)
        return bytes(jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
    finally:
        stream.close()


def read_small_text(spark: SparkSession, path: str) -> str:
    return read_bytes(spark, path).decode("utf-8")


def list_tables(spark: SparkSession, root: str) -> list[TableRef]:
    """Every Delta table found under the root (by location: a table needs no catalog to be found)."""
    found = []
    for layer in LAYERS:
        fs, layer_path = hadoop_path(spark, f"{root.rstrip('/')}/{layer}")
        if not fs.exists(layer_path):
            continue
        for status in fs.listStatus(layer_path):
            name = status.getPath().getName()
            if status.isDirectory() and DeltaTable.isDeltaTable(spark, str(status.getPath().toString())):
                found.append(TableRef(layer, name, ""))
    return found


def register_all(spark: SparkSession, root: str) -> list[TableRef]:
    """Register every Delta table found under the root, so `spark.table("silver.encounter")` works."""
    found = list_tables(spark, root)
    new = [ref for ref in found if _registration(spark, ref, root) not in _REGISTERED]
    for done, ref in enumerate(new, start=1):
        progress.step("register", ref.qualified, done, len(new), "tables")
        register(spark, ref, root)
    return found


def _finish(spark: SparkSession, ref: TableRef, root: str) -> Written:
    register(spark, ref, root)
    written = describe(spark, ref, root)
    progress.wrote(written.table, written.version, written.rows)
    chaos.committed(written.table)
    return written


def append(spark: SparkSession, df: DataFrame, ref: TableRef, root: str, merge_schema: bool = False) -> Written:
    """Append in one commit; `merge_schema` lets a table made by an older release gain new columns."""
    df.write.format("delta").mode("append").option("mergeSchema", str(merge_schema).lower()).save(ref.path(root))
    return _finish(spark, ref, root)


def overwrite(spark: SparkSession, df: DataFrame, ref: TableRef, root: str) -> Written:
    (df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
     .save(ref.path(root)))
    return _finish(spark, ref, root)


def replace_where(spark: SparkSession, df: DataFrame, ref: TableRef, root: str, condition: str) -> Written:
    """Replace the rows matching the SQL `condition` (every row of `df` must match it) in one commit."""
    if not exists(spark, ref, root):
        return append(spark, df, ref, root)
    df.write.format("delta").mode("overwrite").option("replaceWhere", condition).save(ref.path(root))
    return _finish(spark, ref, root)


def replace_groups(spark: SparkSession, rows: DataFrame, ref: TableRef, root: str, groups: DataFrame,
                   on: tuple[str, ...]) -> Written:
    """Delete every row of the groups (`groups` holds their `on` values) and insert `rows`, in one MERGE commit.

    One marker row per group matches all of the group's rows (delete); the new rows never match (insert).
    Every row of `rows` must belong to one of the groups. Creates the table on first use.
    """
    if not exists(spark, ref, root):
        return append(spark, rows, ref, root)
    marker = "_replace_group"
    markers = groups.select(*on).distinct()
    for field in rows.schema.fields:
        if field.name not in on:
            markers = markers.withColumn(field.name, F.lit(None).cast(field.dataType))
    source = (rows.withColumn(marker, F.lit(False))
              .unionByName(markers.select(*rows.columns).withColumn(marker, F.lit(True))))
    condition = " AND ".join(f"t.`{k}` = s.`{k}`" for k in on) + f" AND s.{marker}"
    (DeltaTable.forPath(spark, ref.path(root)).alias("t").merge(source.alias("s"), condition)
     .whenMatchedDelete()
     .whenNotMatchedInsert(condition=f"NOT s.{marker}", values={c: f"s.`{c}`" for c in rows.columns})
     .execute())
    return _finish(spark, ref, root)


def merge(spark: SparkSession, df: DataFrame, ref: TableRef, root: str,
          keys: tuple[str, ...] | None = None, update_when: str | None = None,
          delete_column: str | None = None, skip_empty: bool = False) -> Written:
    """Upsert by key: update matched rows (optionally only `update_when`), insert new ones.

    Creates the table on first use. `update_when` compares `t.` (target) and `s.` (source) columns,
    for example "s.updated_at > t.updated_at", so a re-run with the same data changes no row.
    `delete_column` names a boolean source column (not in the table): true deletes the matched row
    (under the same `update_when`) and inserts nothing. `skip_empty`: a source without a row (one small job,
    cheap on a cached source) makes no MERGE, which would change nothing and still scan the table.
    """
    keys = keys or ref.keys
    path = ref.path(root)
    exists = DeltaTable.isDeltaTable(spark, path)
    if exists and skip_empty and df.isEmpty():
        return describe(spark, ref, root)
    if not exists:
        if delete_column:
            df = df.where(~F.col(delete_column)).drop(delete_column)
        df.write.format("delta").mode("append").save(path)
        return _finish(spark, ref, root)
    condition = " AND ".join(f"t.{k} <=> s.{k}" for k in keys)
    builder = DeltaTable.forPath(spark, path).alias("t").merge(df.alias("s"), condition)
    if delete_column:
        columns = {c: f"s.`{c}`" for c in df.columns if c != delete_column}
        deleted = f"s.`{delete_column}`" + (f" AND ({update_when})" if update_when else "")
        updated = f"NOT s.`{delete_column}`" + (f" AND ({update_when})" if update_when else "")
        builder = (builder.whenMatchedDelete(condition=deleted)
                   .whenMatchedUpdate(condition=updated, set=columns)
                   .whenNotMatchedInsert(condition=f"NOT s.`{delete_column}`", values=columns))
    else:
        builder = builder.whenMatchedUpdateAll(condition=update_when).whenNotMatchedInsertAll()
    builder.execute()
    return _finish(spark, ref, root)


def update_columns(spark: SparkSession, df: DataFrame, ref: TableRef, root: str,
                   columns: tuple[str, ...]) -> Written:
    """Set `columns` of the rows matched by key to the values in `df` (rows not in the table are ignored)."""
    return update_by(spark, df, ref, root, ref.keys, columns)


def update_by(spark: SparkSession, df: DataFrame, ref: TableRef, root: str, on: tuple[str, ...],
              columns: tuple[str, ...]) -> Written:
    """Set `columns` of every row matching `df` on the `on` columns (one `df` row may match many rows)."""
    condition = " AND ".join(f"t.{k} <=> s.{k}" for k in on)
    changed = " OR ".join(f"NOT (t.{c} <=> s.{c})" for c in columns)
    (DeltaTable.forPath(spark, ref.path(root)).alias("t").merge(df.alias("s"), condition)
     .whenMatchedUpdate(condition=changed, set={c: f"s.{c}" for c in columns}).execute())
    return _finish(spark, ref, root)
