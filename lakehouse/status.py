"""`lakehouse status`: the lakehouse at a glance, and the same facts for notebooks.

Everything here is bounded by the number of tables, jobs, hospitals and tasks (never by the region's
rows): versions come from each table's newest commit file, row counts from ops.job_run (see `tables`),
the rest from small aggregations.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from functools import reduce

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lakehouse import io
from lakehouse.catalog import JOB_RUN, LAYERS, QUARANTINE
from lakehouse.config import Settings


@dataclass(frozen=True)
class TableState:
    layer: str
    name: str
    version: int
    rows: int
    last_operation: str
    last_modified: dt.datetime


@dataclass(frozen=True)
class LastRun:
    job: str
    status: str
    ended_at: dt.datetime
    seconds: float
    message: str
    run_id: str = ""


@dataclass(frozen=True)
class Champion:
    task: str
    model_name: str
    version: str | None
    auroc: float | None
    run_id: str | None


@dataclass
class Status:
    root: str
    tables: list[TableState] = field(default_factory=list)
    runs: list[LastRun] = field(default_factory=list)
    quarantine: dict[str, dict[str, int]] = field(default_factory=dict)  # hospital -> layer -> rows
    champions: list[Champion] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        lines = [f"lakehouse at {self.root}"]
        if not self.tables:
            lines.append("  no tables yet: run `lakehouse run-all` (or ingest, refine, link, build)")
        for layer in LAYERS:
            mine = [t for t in self.tables if t.layer == layer]
            if mine:
                lines.append(f"  {layer} ({len(mine)} tables)")
            lines += [f"    {table_line(t)}" for t in mine]
        lines.append("  last runs")
        if not self.runs:
            lines.append("    none logged in ops.job_run")
        for r in self.runs:
            lines.append(f"    {r.job:<28} {r.status:<10} {r.ended_at:%Y-%m-%d %H:%M} {r.seconds:>8.1f}s  "
                         f"run {r.run_id}  {r.message[:60]}")
        lines.append("  quarantine (rows per hospital and layer)")
        if not self.quarantine:
            lines.append("    empty")
        for hospital, layers in sorted(self.quarantine.items()):
            lines.append(f"    {hospital:<10} " + ", ".join(f"{k}={v}" for k, v in sorted(layers.items())))
        lines.append("  champions")
        lines += [f"    {c.task:<24} {champion_line(c)}" for c in self.champions]
        return "\n".join(lines)


def table_line(t: TableState) -> str:
    return (f"{t.layer + '.' + t.name:<40} rows={t.rows:<10} v{t.version:<5} {t.last_operation:<18} "
            f"{t.last_modified:%Y-%m-%d %H:%M}")


def champion_line(c: Champion) -> str:
    if c.version is None:
        return f"{c.model_name}: no champion yet (run `lakehouse train`)"
    auroc = "n/a" if c.auroc is None else f"{c.auroc:.3f}"
    return f"models:/{c.model_name}@champion = v{c.version} (external AUROC {auroc}, run {c.run_id})"


def tables(spark: SparkSession, root: str) -> list[TableState]:
    """Every Delta table under the root with its latest version, rows and last operation.

    The version, time and operation come from the newest commit file of each table's log (`io.head`). The
    rows come from ops.job_run, which records the rows of every table version a job wrote; the tables whose
    latest version no job recorded (ops.job_run itself, a table written by hand or by a notebook) are
    counted in one Spark job, from Delta's file statistics. Reading each table's snapshot instead costs
    ~2 s a table here."""
    heads = {ref.qualified: (ref, io.head(spark, ref, root)) for ref in io.list_tables(spark, root)}
    rows: dict[str, int] = {}
    if JOB_RUN.qualified in heads:
        current = spark.createDataFrame([(t, h.version) for t, (_, h) in heads.items()], "table STRING, version BIGINT")
        written = (io.read(spark, JOB_RUN, root).select(F.explode("outputs").alias("o"))
                   .select("o.table", "o.version", "o.rows").join(current, ["table", "version"])
                   .groupBy("table").agg(F.max("rows").alias("rows")))
        rows = {r.table: r.rows for r in written.collect()}  # at most one row per table
    unrecorded = [io.read(spark, ref, root).agg(F.count(F.lit(1)).alias("rows"))  # answered from file statistics
                  .select(F.lit(name).alias("table"), "rows") for name, (ref, _) in heads.items() if name not in rows]
    if unrecorded:
        rows.update({r.table: r.rows for r in reduce(DataFrame.unionByName, unrecorded).collect()})  # a row a table
    states = [TableState(ref.layer, ref.name, h.version, rows.get(name, 0), h.operation, h.time)
              for name, (ref, h) in heads.items()]
    return sorted(states, key=lambda t: (LAYERS.index(t.layer), t.name))


def last_runs(spark: SparkSession, root: str) -> list[LastRun]:
    """The latest run of each job, newest first."""
    if not io.exists(spark, JOB_RUN, root):
        return []
    latest = Window.partitionBy("job").orderBy(F.col("ended_at").desc())
    rows = (io.read(spark, JOB_RUN, root).withColumn("n", F.row_number().over(latest)).where("n = 1")
            .orderBy(F.col("ended_at").desc()).collect())  # one row per job
    return [LastRun(r.job, r.status, r.ended_at, (r.ended_at - r.started_at).total_seconds(), r.message or "",
                    r.run_id)
            for r in rows]


def quarantine_counts(spark: SparkSession, root: str) -> dict[str, dict[str, int]]:
    if not io.exists(spark, QUARANTINE, root):
        return {}
    counts: dict[str, dict[str, int]] = {}
    for r in io.read(spark, QUARANTINE, root).groupBy("hospital_id", "layer").count().collect():  # hospitals x 2
        counts.setdefault(r.hospital_id or "unknown", {})[r.layer] = r["count"]
    return counts


def champions(settings: Settings) -> list[Champion]:
    from mlflow import MlflowClient

    from lakehouse.ml.train import PRIMARY_METRIC, current

    found = []
    for name, task in sorted(settings.tasks.items()):
        version = current(settings, task)
        auroc = None
        if version is not None:
            auroc = MlflowClient().get_run(version.run_id).data.metrics.get(PRIMARY_METRIC)
        found.append(Champion(name, task.model_name, version.version if version else None, auroc,
                              version.run_id if version else None))
    return found


def status(spark: SparkSession, settings: Settings) -> Status:
    root = settings.root
    return Status(root, tables(spark, root), last_runs(spark, root), quarantine_counts(spark, root),
                  champions(settings))

