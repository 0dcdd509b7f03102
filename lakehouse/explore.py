"""What the notebooks call: open the lakehouse, small summaries, and the plots.

Notebooks hold no logic of their own: every number they show comes from a function here (or from the
pipeline), so the same number is tested and reachable from a plain Python session. Everything that
reaches the driver is bounded: per layer, hospital, rule, cohort member series, or one person.

Plots use a bare matplotlib `Figure` (no pyplot state): a notebook displays the returned figure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from lakehouse import io
from lakehouse.catalog import DQ_RESULT, LAB_RESULT, PATIENT_SUMMARY, TIMELINE
from lakehouse.config import Settings, load_settings
from lakehouse.gold.timeline import ADMISSION, DISCHARGE, person_timeline

ENV_CONF, ENV_ENV = "LAKEHOUSE_CONF_DIR", "LAKEHOUSE_ENV"


@dataclass
class Lakehouse:
    settings: Settings
    spark: SparkSession


def open_lakehouse(conf_dir: str | Path | None = None, env: str | None = None, root: str | None = None) -> Lakehouse:
    """Settings (validated), a Spark session with Delta, every table registered as `<layer>.<name>`, and
    MLflow pointed at the configured store. Defaults: $LAKEHOUSE_CONF_DIR or the project's conf/,
    $LAKEHOUSE_ENV or local, $LAKEHOUSE_ROOT or the configured root."""
    from lakehouse.ml import tracking
    from lakehouse.spark import build_spark

    project = Path(__file__).resolve().parents[1]
    settings = load_settings(conf_dir or os.environ.get(ENV_CONF) or project / "conf",
                             env or os.environ.get(ENV_ENV, "local"), root)
    spark = build_spark(settings)
    io.register_all(spark, settings.root)
    tracking.configure(settings)
    return Lakehouse(settings, spark)


# --- 1. the region --------------------------------------------------------------------------------

def table_counts(spark: SparkSession, settings: Settings) -> pd.DataFrame:
    """layer, table, rows, version of every table (as `lakehouse status` shows them)."""
    from lakehouse.status import tables

    return pd.DataFrame([{"layer": t.layer, "table": t.name, "rows": t.rows, "version": t.version}
                         for t in tables(spark, settings.root)])


def dq_pass_rates(spark: SparkSession, root: str) -> pd.DataFrame:
    """Per hospital and silver table, from the latest refine run that checked them: the rules checked and
    failed, and the share of row checks that passed (rules x hospitals: small)."""
    results = io.read(spark, DQ_RESULT, root)
    every = Window.partitionBy("table", "hospital_id")
    latest = (results.withColumn("_last", F.max("evaluated_at").over(every))
              .where(F.col("evaluated_at") == F.col("_last")))
    return (latest.groupBy("hospital_id", "table")
            .agg(F.count("*").alias("rules"), F.count(F.when(F.col("status") == "fail", 1)).alias("rules_failed"),
                 F.sum("checked_rows").alias("checks"), F.sum("failed_rows").alias("failed"))
            .withColumn("pass_rate", 1 - F.col("failed") / F.col("checks"))
            .orderBy("hospital_id", "table").toPandas())


def plot_layers(counts: pd.DataFrame):
    figure, axes = _figure(8, 4)
    totals = counts.groupby("layer", sort=False)["rows"].sum()
    axes.bar(totals.index, totals.to_numpy(), color="#4c72b0")
    axes.set(title="Rows per layer", ylabel="rows", yscale="log")
    return figure


def plot_dq(rates: pd.DataFrame):
    """A heatmap: hospitals x silver tables, coloured by pass rate."""
    grid = rates.pivot(index="hospital_id", columns="table", values="pass_rate")
    figure, axes = _figure(max(6, len(grid.columns)), 3 + 0.3 * len(grid))
    image = axes.imshow(grid.to_numpy(), vmin=min(0.9, float(grid.min().min())), vmax=1.0, cmap="RdYlGn",
                        aspect="auto")
    axes.set_xticks(range(len(grid.columns)), grid.columns, rotation=45, ha="right")
    axes.set_yticks(range(len(grid.index)), grid.index)
    for (i, j), value in pd.DataFrame(grid.to_numpy()).stack().items():
        axes.text(j, i, f"{value:.1%}", ha="center", va="center", fontsize="x-small")
    axes.set_title("Data-quality pass rate, latest refine")
    figure.colorbar(image, ax=axes)
    return figure


# --- 2. one person --------------------------------------------------------------------------------

def well_documented_person(spark: SparkSession, root: str, min_hospitals: int = 2) -> str:
    """A person seen at `min_hospitals` or more hospitals with the most lab results (for a tour)."""
    summary = io.read(spark, PATIENT_SUMMARY, root).where(F.size("hospitals") >= min_hospitals)
    labs = (io.read(spark, TIMELINE, root).where(F.col("code").startswith("LOINC//"))
            .join(summary.select("person_key"), "person_key", "left_semi")
            .groupBy("person_key").count())
    best = labs.orderBy(F.col("count").desc(), "person_key").first()
    if best is None:
        raise LookupError(f"no person with events at {min_hospitals} or more hospitals")
    return best.person_key


def timeline_of(spark: SparkSession, root: str, person_key: str) -> pd.DataFrame:
    """One person's events, time-ordered (one person: small)."""
    return person_timeline(spark, root, person_key).toPandas()


def stays(events: pd.DataFrame) -> pd.DataFrame:
    """Inpatient stays from a timeline: hospital, encounter, admitted, discharged (open stays end at NaT)."""
    admit = events[events["code"] == ADMISSION][["encounter_key", "hospital_id", "time"]]
    discharge = events[events["code"] == DISCHARGE][["encounter_key", "time"]]
    return (admit.merge(discharge, on="encounter_key", how="left", suffixes=("_admit", "_discharge"))
            .rename(columns={"time_admit": "admitted", "time_discharge": "discharged"}))


def plot_timeline(events: pd.DataFrame, labs: list[str] | None = None, max_labs: int = 4):
    """Top: inpatient stays as spans, one row per hospital. Below: the person's most frequent lab tests
    (or `labs`, LOINC codes, vital signs too) over time, coloured by the hospital that measured them."""
    lab_rows = events[events["code"].str.startswith("LOINC//") & events["numeric_value"].notna()]
    if labs is None and (lab_rows["source_table"] == LAB_RESULT.qualified).any():
        lab_rows = lab_rows[lab_rows["source_table"] == LAB_RESULT.qualified]
    codes = labs or lab_rows["code"].str.removeprefix("LOINC//").value_counts().index[:max_labs].tolist()
    figure, all_axes = _figure(11, 2 + 2.2 * len(codes), rows=1 + len(codes), sharex=True)
    axes = all_axes if len(codes) else [all_axes]
    spans = stays(events)
    hospitals = sorted(events["hospital_id"].dropna().unique())
    colours = {h: f"C{i}" for i, h in enumerate(hospitals)}
    for row, hospital in enumerate(hospitals):
        mine = spans[spans["hospital_id"] == hospital]
        for stay in mine.itertuples():
            end = stay.discharged if pd.notna(stay.discharged) else events["time"].max()
            axes[0].plot([stay.admitted, end], [row, row], linewidth=8, solid_capstyle="butt", color=colours[hospital])
        visits = events[(events["hospital_id"] == hospital) & events["code"].str.startswith("VISIT//")]
        axes[0].scatter(visits["time"], [row] * len(visits), marker="|", s=120, color=colours[hospital])
    axes[0].set_yticks(range(len(hospitals)), hospitals)
    axes[0].set_ylim(-0.8, len(hospitals) - 0.2)
    axes[0].set_title("Encounters: inpatient stays as spans, visits as ticks")
    for ax, code in zip(axes[1:], codes, strict=True):
        series = lab_rows[lab_rows["code"] == f"LOINC//{code}"]
        for hospital, points in series.groupby("hospital_id"):
            ax.plot(points["time"], points["numeric_value"], marker="o", markersize=4, linewidth=0.8,
                    color=colours.get(hospital), label=hospital)
        unit = series["unit"].dropna().iloc[0] if series["unit"].notna().any() else ""
        ax.set_ylabel(f"LOINC {code}\n{unit}")
        ax.legend(loc="upper left", fontsize="x-small")
    return figure


# --- 3. a cohort ----------------------------------------------------------------------------------

def cohort_from_yaml(spark: SparkSession, settings: Settings, text: str,
                     as_of=None) -> tuple[DataFrame, pd.DataFrame]:
    """Try a cohort definition without writing anything: its members (a DataFrame) and its attrition table.
    The definition is validated as conf/cohorts files are; save it there to have `build` keep it."""
    from lakehouse.catalog import ENCOUNTER, PERSON
    from lakehouse.config import parse_cohort
    from lakehouse.gold.build import as_of_day
    from lakehouse.gold.cohort import attrition, evaluate

    spec = parse_cohort(text, "notebook cohort")
    timeline = io.read(spark, TIMELINE, settings.root)
    as_of = as_of or as_of_day(settings, timeline, spec)
    result = evaluate(spec, timeline, io.read(spark, ENCOUNTER, settings.root), io.read(spark, PERSON, settings.root),
                      as_of)
    steps = attrition(spark, spec, result.steps, as_of).select("step", "criterion", "kind", "persons", "index_events")
    return result.members, steps.toPandas()


def series_long(members: DataFrame, series: str) -> pd.DataFrame:
    """A cohort's series (e.g. hba1c) as rows: person_key, days from the index, value, unit (a cohort's
    members' values of one lab: small)."""
    point = F.explode(F.col("series")[series]).alias("point")
    return (members.select("person_key", "index_time", point)
            .select("person_key", (F.unix_timestamp("point.time") - F.unix_timestamp("index_time"))
                    .alias("seconds"), F.col("point.value").alias("value"), F.col("point.unit").alias("unit"))
            .withColumn("days_from_index", F.round(F.col("seconds") / 86400, 1)).drop("seconds")
            .orderBy("person_key", "days_from_index").toPandas())


def plot_trajectories(points: pd.DataFrame, title: str, ylabel: str):
    """Each member's values against days from the index, and the median per 90-day bin."""
    figure, axes = _figure(9, 5)
    for _, member in points.groupby("person_key"):
        axes.plot(member["days_from_index"], member["value"], color="grey", alpha=0.25, linewidth=0.8)
    if len(points):
        binned = points.assign(bin=(points["days_from_index"] // 90) * 90).groupby("bin")["value"].median()
        axes.plot(binned.index, binned.to_numpy(), color="C3", linewidth=2.5, marker="o", label="median per 90 days")
        axes.legend(loc="upper left")
    axes.axvline(0, color="black", linestyle=":")
    axes.set(title=title, xlabel="days from the index event", ylabel=ylabel)
    return figure


# --- 4 and 5. models ------------------------------------------------------------------------------

def runs_of(settings: Settings, task: str) -> pd.DataFrame:
    """The task's training runs (parents) and their validation runs (children), newest first, with the
    pooled and per-hospital external metrics."""
    import mlflow

    from lakehouse.ml import tracking

    tracking.configure(settings)
    runs = mlflow.search_runs(experiment_names=[settings.main.mlflow.experiment],
                              filter_string=f"tags.task = '{task}'", order_by=["start_time DESC"])
    children = mlflow.search_runs(experiment_names=[settings.main.mlflow.experiment],
                                  filter_string=f"tags.mlflow.runName LIKE '{task}-%'",
                                  order_by=["start_time DESC"])
    return pd.concat([runs.assign(kind="training"), children.assign(kind="validation")], ignore_index=True)


def hospital_table(runs: pd.DataFrame, metric: str = "auroc") -> pd.DataFrame:
    """Validation runs x hospitals: the external `metric` of each held-out hospital."""
    validation = runs[runs["kind"] == "validation"]
    columns = sorted(c for c in validation.columns if c.startswith("metrics.hospital/") and c.endswith(f"/{metric}"))
    table = validation[["tags.mlflow.runName", "run_id", "metrics.pooled/auroc", *columns]].copy()
    table.columns = ["model", "run_id", "pooled_auroc", *[c.split("/")[1] for c in columns]]
    return table.reset_index(drop=True)


def artifact_image(run_id: str, path: str):
    """A logged PNG (e.g. plots/calibration.png of a training run) as a matplotlib figure."""
    import mlflow
    from matplotlib.image import imread

    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)
    figure, axes = _figure(7, 6)
    axes.imshow(imread(local))
    axes.axis("off")
    return figure


def risk_deciles(predictions: DataFrame, features: DataFrame) -> pd.DataFrame:
    """Predicted vs observed risk by decile of predicted risk, for the index events whose label is known
    (decile edges from an approximate percentile: ten rows reach the driver, whatever the region)."""
    keys = ["person_key", "encounter_key", "index_time"]
    known = predictions.join(features.where(F.col("label").isNotNull()).select(*keys, "label"), keys)
    edges = known.agg(F.percentile_approx("probability", [i / 10 for i in range(1, 10)]).alias("e")).first().e
    if edges is None:
        return pd.DataFrame(columns=["decile", "index_events", "predicted", "observed"])
    decile = sum((F.col("probability") > edge).cast("int") for edge in edges) + 1
    return (known.withColumn("decile", decile).groupBy("decile")
            .agg(F.count("*").alias("index_events"), F.avg("probability").alias("predicted"),
                 F.avg("label").alias("observed"))
            .orderBy("decile").toPandas())


def _figure(width: float, height: float, rows: int = 1, sharex: bool = False):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.subplots(rows, 1, sharex=sharex)
    return figure, axes
