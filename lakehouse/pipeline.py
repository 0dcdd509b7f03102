"""The stages, each wrapped in a logged job run. The CLI and jobs/ call these; so do the tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import SparkSession

from lakehouse import io, secrets, status
from lakehouse.bronze.ingest import ingest
from lakehouse.catalog import TIMELINE, TableRef, predictions_table
from lakehouse.config import Settings
from lakehouse.errors import ConfigError, LakehouseError
from lakehouse.gold.build import build, build_inputs, run_cohort, silver_tables
from lakehouse.gold.build import outputs as build_outputs
from lakehouse.gold.meds import MedsExport, export_meds
from lakehouse.io import Written
from lakehouse.ml.score import score, score_inputs
from lakehouse.ml.train import PRIMARY_METRIC, TrainResult, current, mark_killed, train, train_inputs
from lakehouse.runlog import JobRun
from lakehouse.silver.link import OUTPUTS as LINK_OUTPUTS
from lakehouse.silver.link import link, link_inputs
from lakehouse.silver.refine import OUTPUTS as REFINE_OUTPUTS
from lakehouse.silver.refine import refine, refine_inputs
from lakehouse.synth.generator import GenerateResult, GeneratorConfig, generate


@dataclass
class PipelineReport:
    """What a run-all did: every table (latest state), every model trained, the champions."""

    tables: list[status.TableState] = field(default_factory=list)
    models: list[TrainResult] = field(default_factory=list)
    champions: list[status.Champion] = field(default_factory=list)


def check_landing(settings: Settings, landing: str | None, flag: str = "--landing") -> str:
    """The landing folder must exist before anything starts (local paths are checked here)."""
    if landing is None:
        landing, file, key = settings.landing, str(settings.conf_dir / "base" / "lakehouse.yaml"), "landing"
    else:
        landing, file, key = settings.path(landing), "command line", flag
    if "://" not in landing and not Path(landing).is_dir():
        raise ConfigError(file, key, f"landing folder {landing} does not exist")
    return landing


def run_generate(settings: Settings, out: str | None = None, overwrite: bool = False, demo: bool = False,
                 **options) -> GenerateResult:
    """The generator's own defaults (the yardstick), or with `demo` the smaller sample of `demo:` in config."""
    params = {}
    if demo:
        sample = settings.main.demo
        params = {"hospitals": sample.hospitals, "patients": sample.patients, "days": sample.days, "seed": sample.seed}
    params.update({k: v for k, v in options.items() if v is not None})
    hospitals = params.get("hospitals", GeneratorConfig.hospitals)
    missing = [f"H{h + 1:02d}" for h in range(hospitals) if f"H{h + 1:02d}" not in settings.sources]
    if missing:
        print(f"note: no source contract for {missing}: their files will be recorded as unmatched at ingest")
    return generate(settings.path(out or settings.main.demo.out), overwrite=overwrite, **params)


def run_ingest(spark: SparkSession, settings: Settings, landing: str) -> JobRun:
    """Bronze: idempotent per file, so it needs no skip rule of its own."""
    with JobRun(spark, settings, "ingest") as run:
        result = ingest(spark, settings, landing, run.run_id)
        for written in result.written:
            run.wrote(written)
        run.note(result.summary())
        if result.error is not None:  # logged as a failed run with what it wrote, then the CLI's exit code
            raise result.error
    return run


def _stage(spark: SparkSession, settings: Settings, job: str, inputs: list[Written], outputs: list[TableRef],
           work: Callable[[JobRun], list[Written]], force: bool) -> JobRun:
    """Run `work` unless the job's inputs and config are unchanged since its last success."""
    with JobRun(spark, settings, job) as run:
        for written in inputs:
            run.read(written)
        if not force and run.up_to_date() and all(io.exists(spark, ref, settings.root) for ref in outputs):
            run.skip()
            written_now = [io.describe(spark, ref, settings.root) for ref in outputs]
        else:
            written_now = work(run)
        for written in written_now:
            run.wrote(written)
    return run


def run_refine(spark: SparkSession, settings: Settings, force: bool = False, full: bool = False) -> JobRun:
    """Silver from the bronze batches not yet refined (`full`: from all of bronze, every row re-mapped)."""
    key, vault_key = secrets.pseudonym_key(settings), secrets.vault_key(settings)
    return _stage(spark, settings, "refine", refine_inputs(spark, settings), list(REFINE_OUTPUTS),
                  lambda run: refine(spark, settings, key, vault_key, run.run_id, full), force or full)


def run_link(spark: SparkSession, settings: Settings, force: bool = False) -> JobRun:
    """The regional person index over every record in the vault; person_keys follow it through silver."""
    key, vault_key = secrets.pseudonym_key(settings), secrets.vault_key(settings)

    def work(run: JobRun) -> list[Written]:
        result = link(spark, settings, key, vault_key, run.run_id)
        run.note(result.summary())
        return result.written

    return _stage(spark, settings, "link", link_inputs(spark, settings), list(LINK_OUTPUTS), work, force)


def run_build(spark: SparkSession, settings: Settings, force: bool = False, full: bool = False) -> JobRun:
    """Gold from silver: an increment for the persons and days silver changed since the last build."""
    def work(run: JobRun) -> list[Written]:
        result = build(spark, settings, run.previous_inputs(), full, run.inputs)
        run.note(result.summary())
        return result.written

    return _stage(spark, settings, "build", build_inputs(spark, settings), build_outputs(settings), work,
                  force or full)


def run_cohort_job(spark: SparkSession, settings: Settings, name: str, as_of=None):
    """One cohort from the current timeline (the build writes them all); returns its attrition rows."""
    spec = settings.cohort(name)
    if not io.exists(spark, TIMELINE, settings.root):
        raise LakehouseError("gold.patient_timeline does not exist yet: run `lakehouse build` first")
    with JobRun(spark, settings, f"cohort:{name}") as run:
        timeline = io.read(spark, TIMELINE, settings.root)
        run.read(io.describe(spark, TIMELINE, settings.root))
        table, written = run_cohort(spark, settings, spec, timeline, silver_tables(spark, settings), as_of)
        for item in written:
            run.wrote(item)
        attrition = table.orderBy("step").collect()  # one row per criterion
        run.note("; ".join(f"{r['criterion']}: {r['persons']}" for r in attrition))
    return attrition


def run_export_meds(spark: SparkSession, settings: Settings, out: str) -> MedsExport:
    with JobRun(spark, settings, "export-meds") as run:
        run.read(io.describe(spark, TIMELINE, settings.root))
        result = export_meds(spark, settings, out)
        run.note(f"{result.out}: {result.subjects} subjects, {result.events} events, {result.shards} shards, "
                 f"{result.codes} codes, timeline version {result.timeline_version}")
    return result


def run_train(spark: SparkSession, settings: Settings, task: str | None = None,
              force: bool = False) -> list[TrainResult]:
    results = []
    for spec in _tasks(settings, task):
        source = train_inputs(spark, settings, spec)
        with JobRun(spark, settings, f"train:{spec.name}") as run:
            run.read(source)
            if run.recovered:  # before the skip rule: a killed forced retrain leaves nothing RUNNING either
                run.note(f"{mark_killed(settings, run.recovered)} MLflow runs of killed run {run.recovered} "
                         "marked KILLED")
            if not force and run.up_to_date() and current(settings, spec) is not None:
                run.skip()
                continue
            result = train(spark, settings, spec, source, run.run_id)
            run.note(f"mlflow run {result.run_id}; {result.model_name} v{result.version}; "
                     f"{PRIMARY_METRIC}={result.metrics[PRIMARY_METRIC]:.3f}; {result.decision}")
        results.append(result)
    return results


def run_score(spark: SparkSession, settings: Settings, task: str | None = None, force: bool = False) -> list[JobRun]:
    return [_stage(spark, settings, f"score:{spec.name}", score_inputs(spark, settings, spec),
                   [predictions_table(spec.name)], lambda run, spec=spec: [score(spark, settings, spec)], force)
            for spec in _tasks(settings, task)]


def run_all(spark: SparkSession, settings: Settings, landing: str, force: bool = False) -> PipelineReport:
    report = PipelineReport()
    run_ingest(spark, settings, landing)
    run_refine(spark, settings, force)
    run_link(spark, settings, force)
    run_build(spark, settings, force)
    report.models = run_train(spark, settings, None, force)
    run_score(spark, settings, None, force)
    report.tables, report.champions = status.tables(spark, settings.root), status.champions(settings)
    return report


def _tasks(settings: Settings, task: str | None):
    if task is not None:
        return [settings.task(task)]
    if not settings.tasks:
        raise LakehouseError(f"no prediction tasks configured under {settings.conf_dir / 'tasks'}")
    return list(settings.tasks.values())
