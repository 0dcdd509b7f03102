"""Readable views of silver's quality: vocabulary coverage and the data-quality report (HTML).

Both read small aggregates only: coverage groups silver by hospital and code, the report reads
`ops.dq_result` (one row per run, rule and hospital).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from functools import reduce
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lakehouse import io
from lakehouse.catalog import DQ_RESULT, SILVER
from lakehouse.errors import LakehouseError

MAPPED_TABLES = ("diagnosis", "procedure", "lab_result", "vital_sign", "medication")


def _coded(spark: SparkSession, root: str) -> list[tuple[str, DataFrame]]:
    """(entity, silver table) of every existing silver table with a standard code."""
    coded = [(t, io.read(spark, SILVER[t], root)) for t in MAPPED_TABLES if io.exists(spark, SILVER[t], root)]
    if not coded:
        raise LakehouseError("no silver tables yet: run `lakehouse refine` first")
    return coded


def coverage(spark: SparkSession, root: str) -> DataFrame:
    """(hospital_id, entity, rows, mapped, coverage) for every silver table with a standard code."""
    parts = [frame.groupBy("hospital_id").agg(F.lit(t).alias("entity"), F.count("*").alias("rows"),
                                              F.count(F.when(F.col("is_mapped"), 1)).alias("mapped"))
             for t, frame in _coded(spark, root)]
    return reduce(DataFrame.unionByName, parts).withColumn("coverage", F.round(F.col("mapped") / F.col("rows"), 4))


def top_unmapped(spark: SparkSession, root: str, n: int = 10) -> DataFrame:
    """The `n` most frequent unmapped source codes per hospital and entity, with their names."""
    parts = [frame.where(~F.col("is_mapped")).groupBy("hospital_id", F.lit(t).alias("entity"), "source_code")
             .agg(F.count("*").alias("rows"), F.first("source_name", ignorenulls=True).alias("source_name"))
             for t, frame in _coded(spark, root)]
    rank = Window.partitionBy("hospital_id", "entity").orderBy(F.desc("rows"), "source_code")
    return (reduce(DataFrame.unionByName, parts).withColumn("rank", F.row_number().over(rank))
            .where(F.col("rank") <= n))


@dataclass(frozen=True)
class DqReport:
    path: Path
    runs: int
    failing: list[tuple[str, str, str]]  # (table, rule, hospital) failing in the latest run


def recent_runs(results: DataFrame, last_runs: int = 1) -> list[str]:
    """The run_id of the last `last_runs` refine runs in `results` (ops.dq_result), oldest first; a run is
    dated by its first result (at most `last_runs` rows reach the driver)."""
    runs = (results.groupBy("run_id").agg(F.min("evaluated_at").alias("at")).orderBy(F.desc("at"))
            .limit(last_runs).collect())
    return [r.run_id for r in sorted(runs, key=lambda r: r.at)]


def latest_results(spark: SparkSession, root: str) -> DataFrame | None:
    """ops.dq_result's rows of the latest refine run (every rule and check of it, per hospital); None when
    no refine has recorded a result yet."""
    if not io.exists(spark, DQ_RESULT, root):
        return None
    return latest_of(io.read(spark, DQ_RESULT, root))


def latest_of(results: DataFrame) -> DataFrame | None:
    """The rows of ops.dq_result's latest refine run; None when there is none."""
    order = recent_runs(results)
    return results.where(F.col("run_id") == order[-1]) if order else None


def dq_report(spark: SparkSession, root: str, out: Path, last_runs: int = 30) -> DqReport:
    """Write `out/dq-report.html`: the latest run per hospital and rule, and pass rates across the last runs."""
    if not io.exists(spark, DQ_RESULT, root):
        raise LakehouseError("ops.dq_result does not exist yet: run `lakehouse refine` first")
    results = io.read(spark, DQ_RESULT, root)
    order = recent_runs(results, last_runs)
    if not order:
        raise LakehouseError("ops.dq_result is empty: run `lakehouse refine` first")
    latest = results.where(F.col("run_id") == order[-1]).orderBy("table", "rule", "hospital_id").collect()
    trend = (results.where(F.col("run_id").isin(order)).groupBy("run_id", "hospital_id")
             .agg((1 - F.sum("failed_rows") / F.sum("checked_rows")).alias("pass_rate")).collect())
    out.mkdir(parents=True, exist_ok=True)
    path = out / "dq-report.html"
    path.write_text(_html(order, latest, trend), encoding="utf-8")
    failing = [(r.table, r.rule, r.hospital_id) for r in latest if r.status == "fail"]
    return DqReport(path, len(order), failing)


def _html(order: list[str], latest: list, trend: list) -> str:
    hospitals = sorted({r.hospital_id for r in latest})
    rules = sorted({(r.table, r.rule) for r in latest})
    cell = {(r.table, r.rule, r.hospital_id): r for r in latest}
    head = "".join(f"<th>{html.escape(h)}</th>" for h in hospitals)
    body = []
    for table, rule in rules:
        first = next(cell[(table, rule, h)] for h in hospitals if (table, rule, h) in cell)
        cells = []
        for h in hospitals:
            r = cell.get((table, rule, h))
            if r is None:
                cells.append("<td></td>")
                continue
            css = "fail" if r.status == "fail" else "pass"
            cells.append(f'<td class="{css}" title="{r.failed_rows} of {r.checked_rows} rows fail; threshold '
                         f'{r.threshold:.2%}">{r.pass_rate:.2%}</td>')
        body.append(f"<tr><td>{html.escape(table)}</td><td>{html.escape(rule)}</td><td>{html.escape(first.kind)}"
                    f"</td><td>{html.escape(first.category)}</td><td>{html.escape(first.action)}</td>"
                    + "".join(cells) + "</tr>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Data quality report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }} table {{ border-collapse: collapse; font-size: 13px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 6px; text-align: left; }}
td.pass {{ background: #e6f4ea; }} td.fail {{ background: #fce8e6; font-weight: bold; }}
</style></head><body>
<h1>Silver data quality</h1>
<p>Latest run <code>{html.escape(order[-1])}</code>: pass rate per rule and hospital (hover for counts);
red when below the rule's threshold. {len(order)} runs in the chart.</p>
<h2>Pass rate across runs, per hospital</h2>
{_chart(order, trend)}
<h2>Latest run, per rule and hospital</h2>
<table><tr><th>table</th><th>rule</th><th>kind</th><th>category</th><th>action</th>{head}</tr>
{"".join(body)}
</table></body></html>
"""


COLOURS = ("#1b6ca8", "#d1495b", "#2e933c", "#edae49", "#6c4f9c", "#00798c", "#8c564b", "#7f7f7f")


def _chart(order: list[str], trend: list, width: int = 640, height: int = 240) -> str:
    """An inline SVG line per hospital: rows passing every rule's check / rows checked, per run."""
    low = min([r.pass_rate for r in trend if r.pass_rate is not None] + [0.9])
    low = max(0.0, low - 0.01)
    x = lambda i: 40 + (width - 60) * (i / max(1, len(order) - 1))  # noqa: E731
    y = lambda v: 10 + (height - 40) * (1 - (v - low) / (1 - low or 1))  # noqa: E731
    lines, legend = [], []
    for n, hospital in enumerate(sorted({r.hospital_id for r in trend})):
        points = sorted((order.index(r.run_id), r.pass_rate) for r in trend
                        if r.hospital_id == hospital and r.pass_rate is not None)
        colour = COLOURS[n % len(COLOURS)]
        path = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in points)
        lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        lines += [f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"><title>{html.escape(hospital)} '
                  f'run {i + 1}: {v:.3%}</title></circle>' for i, v in points]
        legend.append(f'<text x="{width - 10}" y="{20 + 14 * n}" text-anchor="end" fill="{colour}">'
                      f'{html.escape(hospital)}</text>')
    axis = (f'<text x="4" y="{y(1.0) + 4:.1f}">100%</text><text x="4" y="{y(low) + 4:.1f}">{low:.0%}</text>'
            f'<text x="40" y="{height - 6}">run 1</text><text x="{width - 20}" y="{height - 6}" text-anchor="end">'
            f'run {len(order)}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11">'
            f'<rect width="100%" height="100%" fill="white" stroke="#ccc"/>{axis}{"".join(lines)}{"".join(legend)}'
            "</svg>")
