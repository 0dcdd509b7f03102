"""What the notebooks call: open the lakehouse, small summaries, and the plots.

Notebooks hold no logic of their own: every number they show comes from a function here (or from the
pipeline), so the same number is tested and reachable from a plain Python session. Everything that
reaches the driver is bounded: per layer, hospital, rule, decile, 90-day bin, a fixed-size sample of a
cohort's members, or one person.

Plots use a bare matplotlib `Figure` (no pyplot state): a notebook displays the returned figure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import access, io
from lakehouse.catalog import DQ_RESULT, ENCOUNTER, LAB_RESULT, PATIENT_SUMMARY, PERSON, QUARANTINE, TIMELINE
from lakehouse.config import Settings, load_settings
from lakehouse.gold.timeline import ADMISSION, DISCHARGE, LOINC_PREFIX, VISIT_PREFIX, events_in_order

ENV_CONF, ENV_ENV = "LAKEHOUSE_CONF_DIR", "LAKEHOUSE_ENV"


@dataclass
class Lakehouse:
    settings: Settings
    spark: SparkSession
    reader: access.Reader

    def table(self, name: str, columns: list[str] | None = None, version: int | None = None) -> DataFrame:
        """`<layer>.<table>` as the notebook's role may see it; the read is audited in ops.audit_log."""
        return self.reader.table(name, columns, version)

    def exists(self, ref: io.TableRef) -> bool:
        return io.exists(self.spark, ref, self.settings.root)


def open_lakehouse(conf_dir: str | Path | None = None, env: str | None = None, root: str | None = None,
                   role: str | None = None, purpose: str = "notebook") -> Lakehouse:
    """Settings (validated), a Spark session with Delta, MLflow pointed at the configured store, and a reader
    of tables through the access policy as $LAKEHOUSE_USER (or the OS user) in `role` ($LAKEHOUSE_ROLE, default
    admin). For an admin every table is also registered as `<layer>.<name>` for SQL. Defaults:
    $LAKEHOUSE_CONF_DIR or the project's conf/, $LAKEHOUSE_ENV or local, $LAKEHOUSE_ROOT or the configured root."""
    from lakehouse.ml import tracking
    from lakehouse.spark import build_spark

    project = Path(__file__).resolve().parents[1]
    settings = load_settings(conf_dir or os.environ.get(ENV_CONF) or project / "conf",
                             env or os.environ.get(ENV_ENV, "local"), root)
    who = access.current(settings, role)  # an unknown role is refused before Spark starts
    spark = build_spark(settings)
    if settings.access.roles[who.role].admin:
        io.register_all(spark, settings.root)
    tracking.configure(settings)
    return Lakehouse(settings, spark, access.Reader(spark, settings, who, purpose, writer_kind="notebook"))


# --- 1. the region --------------------------------------------------------------------------------

def table_counts(lh: Lakehouse) -> pd.DataFrame:
    """layer, table, rows, version of every table (as `lakehouse status` shows them): an admin's view, as every
    table's row count is read from the run log."""
    from lakehouse.status import tables

    access.require_admin(lh.settings, lh.reader.principal, "counting every table")
    return pd.DataFrame([{"layer": t.layer, "table": t.name, "rows": t.rows, "version": t.version}
                         for t in tables(lh.spark, lh.settings.root)])


DQ_RATE_COLUMNS = ["hospital_id", "table", "rules", "rules_failed", "checks", "failed", "pass_rate"]


def dq_pass_rates(lh: Lakehouse) -> pd.DataFrame:
    """Per hospital and silver table, from the latest refine run (as `lakehouse dq-report` picks it): the
    rules and table checks evaluated and failed, and the share of row checks that passed (rules x hospitals:
    small). No rows before a refine has recorded results."""
    from lakehouse.silver.report import latest_of

    latest = latest_of(lh.table(DQ_RESULT.qualified)) if lh.exists(DQ_RESULT) else None
    if latest is None:
        return pd.DataFrame(columns=DQ_RATE_COLUMNS)
    return (latest.groupBy("hospital_id", "table")
            .agg(F.count("*").alias("rules"), F.count(F.when(F.col("status") == "fail", 1)).alias("rules_failed"),
                 F.sum("checked_rows").alias("checks"), F.sum("failed_rows").alias("failed"))
            .withColumn("pass_rate", 1 - F.col("failed") / F.col("checks"))
            .select(*DQ_RATE_COLUMNS).orderBy("hospital_id", "table").toPandas())


def plot_layers(counts: pd.DataFrame):
    figure, axes = _figure(8, 4)
    totals = counts.groupby("layer", sort=False)["rows"].sum()
    axes.bar(totals.index, totals.to_numpy(), color="#4c72b0")
    axes.set(title="Rows per layer", ylabel="rows", yscale="log")
    return figure


def plot_dq(rates: pd.DataFrame):
    """A heatmap: hospitals x silver tables, coloured by pass rate."""
    if rates.empty:
        figure, axes = _figure(6, 2)
        axes.text(0.5, 0.5, "no data-quality results yet: run `lakehouse refine`", ha="center", va="center")
        axes.axis("off")
        return figure
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


QUARANTINE_COLUMNS = ["hospital_id", "layer", "reason", "count"]


def quarantine_reasons(lh: Lakehouse, top: int = 15) -> pd.DataFrame:
    """The `top` most frequent (hospital, layer, reason) of ops.quarantine with their record counts (`top`
    rows reach the driver); no rows before anything was quarantined."""
    if not lh.exists(QUARANTINE):
        return pd.DataFrame(columns=QUARANTINE_COLUMNS)
    return (lh.table(QUARANTINE.qualified).groupBy("hospital_id", "layer", "reason").count()
            .orderBy(F.col("count").desc(), "hospital_id", "layer", "reason").limit(top)
            .select(*QUARANTINE_COLUMNS).toPandas())


# --- 2. one person --------------------------------------------------------------------------------

def well_documented_person(lh: Lakehouse, min_hospitals: int = 2) -> str:
    """A person seen at `min_hospitals` or more hospitals with the most LOINC-coded lab results (for a tour;
    vital signs, LOINC-coded too, do not count)."""
    summary = lh.table(PATIENT_SUMMARY.qualified).where(F.size("hospitals") >= min_hospitals)
    labs = (lh.table(TIMELINE.qualified)
            .where((F.col("source_table") == LAB_RESULT.qualified) & F.col("code").startswith(LOINC_PREFIX))
            .join(summary.select("person_key"), "person_key", "left_semi")
            .groupBy("person_key").count())
    best = labs.orderBy(F.col("count").desc(), "person_key").first()
    if best is None:
        raise LookupError(f"no person with events at {min_hospitals} or more hospitals")
    return best.person_key


def timeline_of(lh: Lakehouse, person_key: str) -> pd.DataFrame:
    """One person's events, time-ordered (one person: small)."""
    return events_in_order(lh.table(TIMELINE.qualified), person_key).toPandas()


def stays(events: pd.DataFrame) -> pd.DataFrame:
    """Inpatient stays from a timeline: hospital, encounter, admitted, discharged (open stays end at NaT)."""
    admit = events[events["code"] == ADMISSION][["encounter_key", "hospital_id", "time"]]
    discharge = events[events["code"] == DISCHARGE][["encounter_key", "time"]]
    return (admit.merge(discharge, on="encounter_key", how="left", suffixes=("_admit", "_discharge"))
            .rename(columns={"time_admit": "admitted", "time_discharge": "discharged"}))


def plot_timeline(events: pd.DataFrame, labs: list[str] | None = None, max_labs: int = 4):
    """Top: inpatient stays as spans, one row per hospital. Below: the person's most frequent lab tests
    (or `labs`, LOINC codes, vital signs too) over time, coloured by the hospital that measured them."""
    lab_rows = events[events["code"].str.startswith(LOINC_PREFIX) & events["numeric_value"].notna()]
    if labs is None and (lab_rows["source_table"] == LAB_RESULT.qualified).any():
        lab_rows = lab_rows[lab_rows["source_table"] == LAB_RESULT.qualified]
    codes = labs or lab_rows["code"].str.removeprefix(LOINC_PREFIX).value_counts().index[:max_labs].tolist()
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
        visits = events[(events["hospital_id"] == hospital) & events["code"].str.startswith(VISIT_PREFIX)]
        axes[0].scatter(visits["time"], [row] * len(visits), marker="|", s=120, color=colours[hospital])
    axes[0].set_yticks(range(len(hospitals)), hospitals)
    axes[0].set_ylim(-0.8, len(hospitals) - 0.2)
    axes[0].set_title("Encounters: inpatient stays as spans, visits as ticks")
    for ax, code in zip(axes[1:], codes, strict=True):
        series = lab_rows[lab_rows["code"] == f"{LOINC_PREFIX}{code}"]
        for hospital, points in series.groupby("hospital_id"):
            ax.plot(points["time"], points["numeric_value"], marker="o", markersize=4, linewidth=0.8,
                    color=colours.get(hospital), label=hospital)
        unit = series["unit"].dropna().iloc[0] if series["unit"].notna().any() else ""
        ax.set_ylabel(f"LOINC {code}\n{unit}")
        ax.legend(loc="upper left", fontsize="x-small")
    return figure


# --- 3. a cohort ----------------------------------------------------------------------------------

def cohort_from_yaml(lh: Lakehouse, text: str, as_of=None) -> tuple[DataFrame, pd.DataFrame]:
    """Try a cohort definition without writing anything: its members (a DataFrame, evaluated once and kept
    on the executors) and its attrition table. Evaluated as `build` evaluates conf/cohorts files (the same
    validation, as-of day and inputs); save it there to have `build` keep it."""
    from lakehouse.config import parse_cohort
    from lakehouse.gold.build import evaluate_cohort

    spec = parse_cohort(text, "notebook cohort")
    cohort = evaluate_cohort(lh.settings, spec, lh.table(TIMELINE.qualified),
                             {ref.name: lh.table(ref.qualified) for ref in (ENCOUNTER, PERSON)}, as_of)
    members = cohort.members.localCheckpoint()  # read again by every summary of the draft
    steps = cohort.attrition(lh.spark).select("step", "criterion", "kind", "persons", "index_events")
    return members, steps.toPandas()


@dataclass(frozen=True)
class Trajectories:
    """A cohort's series (e.g. hba1c), summarised in Spark. `values`: every value of every member; `kept`:
    those in the asked range. `median`: per bin of `bin_days` days from the index (the bin's start), the
    median of every member's kept values and how many there are. `points`: the kept values (person_key,
    days_from_index, value, unit) of at most `max_members` members, the same ones every run."""

    values: int
    kept: int
    median: pd.DataFrame
    points: pd.DataFrame
    bin_days: int
    max_members: int


def trajectories(members: DataFrame, series: str, within: tuple[float, float] | None = None, bin_days: int = 90,
                 max_members: int = 200) -> Trajectories:
    """A cohort's `series` against days from each member's index event, values outside `within` (low, high)
    set aside. Reaching the driver: one row per bin, and the values of `max_members` members chosen by a
    hash of their person_key (whatever the cohort's size)."""
    point = F.explode(F.col("series")[series]).alias("point")
    days = F.round((F.unix_timestamp("point.time") - F.unix_timestamp("index_time")) / 86400, 1)
    long = (members.select("person_key", "index_time", point)
            .select("person_key", days.alias("days_from_index"), F.col("point.value").alias("value"),
                    F.col("point.unit").alias("unit")))
    keep = F.col("value").between(*within) if within else F.lit(True)
    bins = (long.groupBy((F.floor(F.col("days_from_index") / bin_days) * bin_days).alias("days_from_index"))
            .agg(F.count("*").alias("all"), F.count(F.when(keep, 1)).alias("values"),
                 F.median(F.when(keep, F.col("value"))).alias("median"))
            .toPandas())  # one row per bin: bounded by the series' window, not by the cohort
    median = (bins[(bins["values"] > 0) & bins["days_from_index"].notna()]
              .sort_values("days_from_index")[["days_from_index", "median", "values"]].reset_index(drop=True))
    kept = long.where(keep)
    chosen = (kept.select("person_key").distinct()
              .orderBy(F.xxhash64("person_key"), "person_key").limit(max_members))
    points = (kept.join(chosen, "person_key", "left_semi")
              .orderBy("person_key", "days_from_index").toPandas())  # `max_members` members' values
    return Trajectories(int(bins["all"].sum()), int(bins["values"].sum()), median, points, bin_days, max_members)


def plot_trajectories(series: Trajectories, title: str, ylabel: str):
    """The sampled members' values against days from the index (grey), and every member's median per bin."""
    figure, axes = _figure(9, 5)
    points = series.points
    shown = points["person_key"].nunique()
    for i, (_, member) in enumerate(points.groupby("person_key")):
        axes.plot(member["days_from_index"], member["value"], color="grey", alpha=0.25, linewidth=0.8,
                  label=(f"{shown} members" + (" (a sample)" if shown >= series.max_members else "")) if i == 0
                  else None)
    if len(series.median):
        axes.plot(series.median["days_from_index"], series.median["median"], color="C3", linewidth=2.5, marker="o",
                  label=f"median per {series.bin_days} days, every member")
    if shown or len(series.median):
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


def hospitals_of(runs: pd.DataFrame, metric: str = "auroc") -> list[str]:
    """The held-out hospitals the validation runs report `metric` for: `hospital_table`'s hospital columns."""
    validation = runs[runs["kind"] == "validation"]
    return sorted(c.split("/")[1] for c in validation.columns
                  if c.startswith("metrics.hospital/") and c.endswith(f"/{metric}"))


def hospital_table(runs: pd.DataFrame, metric: str = "auroc") -> pd.DataFrame:
    """Validation runs x hospitals: model, run_id, pooled_<metric>, then the external `metric` of each
    held-out hospital, one column per hospital (`hospitals_of`)."""
    validation = runs[runs["kind"] == "validation"]
    hospitals = hospitals_of(runs, metric)
    table = validation[["tags.mlflow.runName", "run_id", f"metrics.pooled/{metric}",
                        *[f"metrics.hospital/{h}/{metric}" for h in hospitals]]].copy()
    table.columns = ["model", "run_id", f"pooled_{metric}", *hospitals]
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


def predictions_by_hospital(predictions: DataFrame) -> pd.DataFrame:
    """Per hospital: index events scored, mean and 90th-percentile (approximate) risk (one row per hospital)."""
    return (predictions.groupBy("hospital_id")
            .agg(F.count("*").alias("scored"), F.avg("probability").alias("mean_risk"),
                 F.percentile_approx("probability", 0.9).alias("p90_risk"))
            .orderBy("hospital_id").toPandas())


def risk_deciles(predictions: DataFrame, features: DataFrame) -> pd.DataFrame:
    """Predicted vs observed risk by decile of predicted risk, for the index events whose label is known
    (decile edges from an approximate percentile: ten rows reach the driver, whatever the region)."""
    keys = ["person_key", "encounter_key", "index_time"]
    known = predictions.join(features.where(F.col("label").isNotNull()).select(*keys, "label"), keys).persist()
    try:  # read twice: the edges, then the deciles
        edges = known.agg(F.percentile_approx("probability", [i / 10 for i in range(1, 10)]).alias("e")).first().e
        if edges is None:
            return pd.DataFrame(columns=["decile", "index_events", "predicted", "observed"])
        decile = sum((F.col("probability") > edge).cast("int") for edge in edges) + 1
        return (known.withColumn("decile", decile).groupBy("decile")
                .agg(F.count("*").alias("index_events"), F.avg("probability").alias("predicted"),
                     F.avg("label").alias("observed"))
                .orderBy("decile").toPandas())
    finally:
        known.unpersist()


def plot_deciles(deciles: pd.DataFrame, title: str):
    """Observed rate against mean predicted risk per decile (`risk_deciles`), with the diagonal."""
    figure, axes = _figure(6, 5)
    axes.plot(deciles["predicted"], deciles["observed"], marker="o", label="deciles")
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey")
    top = float(max(deciles["predicted"].max(), deciles["observed"].max()) * 1.1) if len(deciles) else 1.0
    axes.set(xlim=(0, top), ylim=(0, top), xlabel="mean predicted risk", ylabel="observed rate", title=title)
    return figure


def _figure(width: float, height: float, rows: int = 1, sharex: bool = False):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.subplots(rows, 1, sharex=sharex)
    return figure, axes
