"""`lakehouse`: one command, a subcommand per stage. Config is validated before Spark starts."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pyspark.sql import functions as F

from lakehouse import io, pipeline, progress, secrets
from lakehouse.config import Settings, load_settings
from lakehouse.errors import LakehouseError, UsageError
from lakehouse.ml import tracking
from lakehouse.ml.train import PRIMARY_METRIC
from lakehouse.status import champion_line, table_line

DESCRIPTION = """A regional clinical data lakehouse.

Stages: generate (sample dumps) -> ingest (bronze) -> refine (silver) -> link (person index) -> build (gold)
-> train (MLflow) -> score (batch predictions). run-all runs them in order.
Tables live at <root>/<layer>/<table> as Delta tables; every run is logged in ops.job_run."""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--conf-dir", default="conf", help="configuration folder (default: conf)")
    parser.add_argument("--env", default="local", help="environment overlay under the conf folder (default: local)")
    parser.add_argument("--root", default=None,
                        help="lakehouse root, a path or Hadoop URI (default: config, or $LAKEHOUSE_ROOT)")
    parser.add_argument("--log-format", choices=["auto", "text", "json"], default="auto",
                        help="progress on stderr: a live line on a terminal, JSON lines otherwise (default: auto)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lakehouse", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=text, description=text)
        _common(command)
        return command

    gen = add("generate", "write a synthetic region's source dumps and ground truth")
    gen.add_argument("--out", help="output folder (default: demo.out in config)")
    gen.add_argument("--hospitals", type=int, help="hospitals; hospital i uses the i-th of five dialects (default 5)")
    gen.add_argument("--patients", type=int, help="persons in the region (default 3000)")
    gen.add_argument("--days", type=int, help="day 1 is the full history; later days are increments (default 1)")
    gen.add_argument("--seed", type=int, help="the same seed gives the same bytes (default 42)")
    gen.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    gen.add_argument("--workers", type=int, default=1, help="processes; the bytes do not depend on it (default 1)")
    gen.add_argument("--block-size", type=int, help="persons per independently seeded block (default 10000)")
    gen.add_argument("--dialects", help="comma-separated dialect per hospital (default: cycle through all five)")
    for rate, default in (("share-multi-hospital", 0.30), ("identity-noise-rate", 0.05),
                          ("hard-negative-share", 0.01), ("defect-rate", 0.005), ("resend-rate", 0.02)):
        gen.add_argument(f"--{rate}", type=float, help=f"(default {default}; see the README)")

    ingest = add("ingest", "land new source files into bronze Delta tables (idempotent per file)")
    ingest.add_argument("--landing", help="landing folder <landing>/<hospital>/<day>/ (default: config)")
    validate = add("validate-source", "profile a hospital's dump against its source contract; writes nothing; "
                   "exit 1 if the verdict is fail")
    validate.add_argument("--hospital", required=True, help="hospital id of a contract under conf/sources")
    validate.add_argument("--landing", help="landing folder <landing>/<hospital>/<day>/ (default: config)")
    validate.add_argument("--max-unparsed", type=float, default=0.05,
                          help="largest share of a column's values that may fail to parse (default 0.05)")
    force = "re-run even when inputs and configuration are unchanged since the last successful run"
    refine_command = add("refine", "bronze -> silver: the bronze batches not refined yet, with standard codes, "
                         "units, merged resends, data-quality rules, encrypted identity vault")
    refine_command.add_argument("--force", action="store_true", help=force)
    refine_command.add_argument("--full", action="store_true",
                                help="re-read all of bronze and re-map every silver row (also done by itself when "
                                     "the configuration changed since the last refine)")
    add("link", "the regional person index: link every hospital patient record to one person "
        "(silver.person_link) and carry person keys through silver").add_argument("--force", action="store_true",
                                                                                  help=force)
    vault_command = add("vault", "the identity vault (key holders only)")
    vault_command.add_argument("action", choices=["rotate-key"],
                               help="rotate-key: re-encrypt the vault under a new key in one commit")
    vault_command.add_argument("--new-key-env", help="environment variable holding the new key (64 hex "
                               "characters); default: a fresh key, written to the secrets file")
    add("pii-scan", "search every string column of silver and gold for national ID numbers, phone numbers and "
        "the vault's names; exit 1 if any is found")
    build_command = add("build", "silver -> gold: patient timeline and summary, cohorts, indicators, feature "
                        "tables (an increment for the persons and days silver changed since the last build)")
    build_command.add_argument("--force", action="store_true", help=force)
    build_command.add_argument("--full", action="store_true", help="rebuild everything, not an increment")
    cohort = add("cohort", "(re)build one cohort of conf/cohorts into gold.cohort_<name> and print its attrition")
    cohort.add_argument("--name", required=True, help="cohort name (conf/cohorts/<name>.yaml)")
    cohort.add_argument("--as-of", type=_date, help="YYYY-MM-DD (default: the cohort's as_of, gold.as_of, or the "
                        "day after the last event)")
    meds_command = add("export-meds", "write the patient timeline as a MEDS dataset (data shards and metadata)")
    meds_command.add_argument("--out", required=True, help="an empty or new local folder")
    train = add("train", "train, evaluate, log to MLflow and register a model per task")
    train.add_argument("--task", help="one task (default: all under conf/tasks)")
    train.add_argument("--force", action="store_true", help=force)
    score = add("score", "score with the registry's champion into gold.predictions_<task>")
    score.add_argument("--task", help="one task (default: all)")
    score.add_argument("--force", action="store_true", help=force)
    run_all = add("run-all", "every stage in order; without --landing, generate the sample first")
    run_all.add_argument("--landing", help="an existing landing folder")
    run_all.add_argument("--force", action="store_true", help=force)
    add("reconcile", "check every landed file: rows read = landed + quarantined, and both are what bronze and "
        "ops.quarantine hold; exit 1 if not")
    coverage = add("vocab-coverage", "mapping coverage of codes to the standard vocabularies per hospital and "
                   "entity, and the most frequent unmapped codes")
    coverage.add_argument("--top", type=int, default=5, help="unmapped codes listed per hospital and entity")
    report = add("dq-report", "write the data-quality report (HTML) from ops.dq_result")
    report.add_argument("--out", required=True, help="folder for dq-report.html")
    add("init-secrets", "create the ignored secrets file with fresh keys (never overwrites)")
    serve_sql = add("serve-sql", "start the SQL endpoint detached: Spark's Thrift JDBC/ODBC server (BI tools) and a "
                    "Spark Connect server (remote notebooks) in one JVM, silver and gold registered as "
                    "<layer>.<table>, for the roles that may read them whole (JDBC: a holder's name and "
                    "`lakehouse api-token` token; Spark Connect: the endpoint's token); every login and statement "
                    "audited; PID and log under services.run_dir")
    serve_api = add("serve-api", "start the REST read API over gold detached (FastAPI on deltalake; tokens from "
                    "`lakehouse api-token`); PID and log under services.run_dir")
    for command in (serve_sql, serve_api):
        command.add_argument("--stop", action="store_true", help="stop the running server")
        command.add_argument("--foreground", action="store_true", help="run in this terminal until Ctrl-C")
    serve_sql.add_argument("--thrift-port", type=int, help="default: services.sql.thrift_port (10000)")
    serve_sql.add_argument("--connect-port", type=int, help="default: services.sql.connect_port (15002)")
    serve_api.add_argument("--port", type=int, help="default: services.api.port (8000)")
    token = add("api-token", "issue a data-service token (REST API, SQL endpoint) for a holder and role of "
                "conf/access.yaml; prints it once "
                "(the tokens file keeps its SHA-256)")
    token.add_argument("--name", required=True, help="who holds it (recorded in ops.audit_log)")
    token.add_argument("--role", required=True, help="a role of conf/access.yaml")
    token.add_argument("--hospital", help="the hospital of a hospital-scoped role (clinician)")
    cluster = add("cluster", "a Spark standalone cluster on this machine (one master, cluster.workers workers; PIDs, "
                  "logs and work folders under services.run_dir/cluster), and jobs submitted to it")
    cluster.add_argument("action", choices=["up", "down", "status", "package", "submit"],
                         help="package: zip the project for --py-files; submit STAGE [ARGS...]: spark-submit "
                              "jobs/STAGE.py to the cluster, the project as a --py-files build, executors on a "
                              "Python without the project")
    cluster.add_argument("stage", nargs="?", help="with submit: a job of jobs/ (run-all, ingest, refine, ...)")
    cluster.add_argument("stage_args", nargs=argparse.REMAINDER, help="with submit: the stage's own options")
    export_command = add("export", "a de-identified research extract of a cohort (Parquet and CSV): keys unique to "
                         "the export, dates shifted per person, quasi-identifiers generalised to k-anonymity, a risk "
                         "summary beside it and in ops.audit_log")
    export_command.add_argument("--cohort", required=True, help="a cohort of conf/cohorts")
    export_command.add_argument("--purpose", required=True, help="why the data leaves (recorded in ops.audit_log)")
    export_command.add_argument("--out", required=True, help="a new or empty folder")
    rollback_command = add("rollback", "restore every table a run wrote to its version before that run (Delta "
                           "RESTORE), logged as a run of its own; refused when later runs wrote those tables")
    rollback_command.add_argument("--run", required=True, help="a run_id of ops.job_run (lakehouse status shows them)")
    rollback_command.add_argument("--force", action="store_true", help="undo the later runs' commits to them too")
    erase_command = add("erase", "remove a person from every layer (right to deletion, withdrawn consent): their "
                        "rows in silver, gold, features, predictions, the vault, bronze and quarantine "
                        "(`lakehouse vacuum` clears earlier versions after erasure.retention_hours); "
                        "ops.audit_log records that it happened and why, not whose")
    erase_command.add_argument("--person", required=True, help="the person_key (silver.person_link)")
    erase_command.add_argument("--reason", required=True, help="why (recorded in ops.audit_log)")
    vacuum_command = add("vacuum", "VACUUM the tables with erasure.retention_hours: files that only earlier versions "
                         "read and that were removed longer ago than that are deleted (what an erasure left too)")
    vacuum_command.add_argument("--table", action="append", help="<layer>.<table> (repeatable; default: every table)")
    vacuum_command.add_argument("--full", action="store_true", help="list every folder (also deletes files no "
                                "commit added, e.g. from killed writes) instead of reading the log (LITE)")
    add("audit-verify", "recompute every writer's hash chain of ops.audit_log; exit 1 naming the first broken "
        "entry (edited, deleted, or replaced)")
    status_command = add("status", "the lakehouse at a glance: tables per layer with their latest Delta version, "
                         "the last run of each job, quarantined rows per hospital, each task's champion")
    status_command.add_argument("--json", action="store_true", help="print it as one JSON document")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.time()
    progress.configure(sys.stderr, structured=True if args.log_format == "json" else
                       False if args.log_format == "text" else None)
    try:
        settings = load_settings(args.conf_dir, args.env, args.root)
        if args.command in LOGGED_JOBS:  # their job run reports the start and the end
            return COMMANDS[args.command](args, settings)
        with progress.command(args.command) as end:
            end.exit_code = COMMANDS[args.command](args, settings)
            return end.exit_code
    except LakehouseError as err:
        progress.reset()
        print(f"error: {err}", file=sys.stderr)
        if err.advice:
            print(f"  what to do: {err.advice}", file=sys.stderr)
        return err.exit_code
    except Exception as err:
        if os.environ.get("LAKEHOUSE_DEBUG"):
            raise
        progress.reset()
        print(f"error: {args.command} failed: {type(err).__name__}: {_first_line(err)}", file=sys.stderr)
        logged = getattr(err, "logged_run", None)  # set by the job run that logged the failure
        where = (f"{logged} is logged as failed in ops.job_run (see `lakehouse status`)" if logged else
                 "it failed before any job run was logged")
        print(f"  what to do: {where}; nothing it wrote is half-committed, since every Delta write is one commit. "
              "Set LAKEHOUSE_DEBUG=1 for the full traceback.", file=sys.stderr)
        return 1
    finally:
        progress.reset()
        if args.command not in ("init-secrets", "api-token"):
            print(f"({args.command} finished in {time.time() - started:.1f}s)", file=sys.stderr)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:500] if text else "(no message)"


def _spark(settings: Settings, register: bool = True):
    """The session, with the lakehouse's tables registered, watched for progress while a stage runs."""
    from lakehouse.spark import build_spark

    spark = build_spark(settings)
    if register:
        io.register_all(spark, settings.root)
    progress.watch_spark(spark)
    return spark


GENERATOR_OPTIONS = ("hospitals", "patients", "days", "seed", "workers", "block_size", "share_multi_hospital",
                     "identity_noise_rate", "hard_negative_share", "defect_rate", "resend_rate")


def _generate(args, settings: Settings, demo: bool = False) -> int:
    options = {name: getattr(args, name) for name in GENERATOR_OPTIONS}
    if args.dialects:
        options["dialects"] = tuple(d.strip() for d in args.dialects.split(","))
    result = pipeline.run_generate(settings, args.out, args.overwrite, demo, **options)
    print(f"generated {result.files} files for {', '.join(result.hospitals)} in {result.landing}")
    print("rows: " + ", ".join(f"{k}={v}" for k, v in result.rows.items()) + f"; ground truth in {result.truth}")
    print("planted defects: " + ", ".join(f"{k}={v}" for k, v in result.defects.items()))
    return 0


def _ingest(args, settings: Settings) -> int:
    landing = pipeline.check_landing(settings, args.landing)
    pipeline.run_ingest(_spark(settings), settings, landing)
    return 0


def _validate_source(args, settings: Settings) -> int:
    from lakehouse.bronze.profile import PASS, profile_source
    from lakehouse.errors import ConfigError

    if args.hospital not in settings.sources:
        raise ConfigError(str(settings.conf_dir / "sources"), args.hospital,
                          f"no source contract for this hospital; known: {sorted(settings.sources)}")
    landing = pipeline.check_landing(settings, args.landing)
    report = profile_source(_spark(settings, register=False), settings, args.hospital, landing, args.max_unparsed)
    print(report.render())
    return 0 if report.verdict == PASS else 1


def _refine(args, settings: Settings) -> int:
    secrets.pseudonym_key(settings), secrets.vault_key(settings)  # refuse before Spark starts
    pipeline.run_refine(_spark(settings), settings, args.force, args.full)
    return 0


def _link(args, settings: Settings) -> int:
    secrets.pseudonym_key(settings), secrets.vault_key(settings)  # refuse before Spark starts
    pipeline.run_link(_spark(settings), settings, args.force)
    return 0


def _vault(args, settings: Settings) -> int:
    from lakehouse.silver import vault

    old = secrets.vault_key(settings)
    new = secrets.get_key(settings, args.new_key_env) if args.new_key_env else secrets.new_key()
    if new == old:
        raise UsageError("the new vault key is the current one")
    env_name = settings.main.secrets.vault_key_env
    staged = None if args.new_key_env else secrets.stage_key(settings, env_name, new)  # saved before re-keying
    written = vault.rotate(_spark(settings), settings.root, old, new, env_name)
    print(f"vault re-encrypted under the new key: {written.table} version {written.version}, {written.rows} rows")
    if staged:
        secrets.promote_key(settings, env_name)
        print(f"the new key is now {env_name} in {staged}; the old key is no longer kept anywhere")
    else:
        print(f"set {env_name} to the value of {args.new_key_env} now: the vault no longer opens with the old key")
    print("earlier table versions still hold the old ciphertext: VACUUM vault.identity after the retention period")
    return 0


def _pii_scan(args, settings: Settings) -> int:
    from lakehouse.silver.pii import scan

    hits = scan(_spark(settings), settings.root, secrets.vault_key(settings))
    for hit in hits:
        print(f"  PII {hit.line()}")
    print(f"pii-scan: {len(hits)} columns with direct identifiers" if hits else
          "pii-scan: no direct identifiers found in silver or gold")
    return 1 if hits else 0


def _build(args, settings: Settings) -> int:
    pipeline.run_build(_spark(settings), settings, args.force, args.full)
    return 0


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {value!r}") from None


def _cohort(args, settings: Settings) -> int:
    settings.cohort(args.name)  # validates the name before Spark
    attrition = pipeline.run_cohort_job(_spark(settings), settings, args.name, args.as_of)
    print(f"cohort {args.name} (as of {attrition[0]['as_of']}): gold.cohort_{args.name}")
    for row in attrition:
        print(f"  {row['step']:>2} {row['kind']:<9} {row['criterion']:<28} persons={row['persons']:<8} "
              f"index_events={row['index_events']}")
    return 0


def _export_meds(args, settings: Settings) -> int:
    result = pipeline.run_export_meds(_spark(settings), settings, args.out)
    print(f"MEDS dataset in {result.out}: {result.subjects} subjects, {result.events} events in {result.shards} "
          f"shards, {result.codes} codes (timeline version {result.timeline_version})")
    return 0


def _train(args, settings: Settings) -> int:
    tasks = [settings.task(args.task)] if args.task else None  # validates the name before Spark
    pipeline.run_train(_spark(settings), settings, tasks[0].name if tasks else None, args.force)
    return 0


def _score(args, settings: Settings) -> int:
    if args.task:
        settings.task(args.task)
    pipeline.run_score(_spark(settings), settings, args.task, args.force)
    return 0


def _run_all(args, settings: Settings) -> int:
    if args.landing is None:
        demo_landing = f"{settings.path(settings.main.demo.out)}/landing"
        if not os.path.isdir(demo_landing):
            _generate(build_parser().parse_args(["generate"]), settings, demo=True)
        landing = demo_landing
    else:
        landing = pipeline.check_landing(settings, args.landing)
    if args.landing is None:
        secrets.init_secrets(settings)  # the demo makes its own keys in the ignored secrets file
    secrets.pseudonym_key(settings), secrets.vault_key(settings)  # refuse before Spark starts
    report = pipeline.run_all(_spark(settings), settings, landing, args.force)
    print(render_report(report, settings))
    return 0


def render_report(report: pipeline.PipelineReport, settings: Settings) -> str:
    lines = ["", "== lakehouse run-all summary", f"   root: {settings.root}", "   tables:"]
    lines += [f"     {table_line(t)}" for t in report.tables]
    for model in report.models:
        lines.append(f"   trained: {model.model_name} v{model.version} (mlflow run {model.run_id}); "
                     f"external AUROC {model.metrics[PRIMARY_METRIC]:.3f}; {model.decision}")
    if not report.models:
        lines.append("   trained: nothing (features unchanged since the last training; --force retrains)")
    lines += [f"   registered: {champion_line(c)}" for c in report.champions]
    lines.append(f"   MLflow UI: {tracking.ui_command(settings)}")
    return "\n".join(lines)


def _reconcile(args, settings: Settings) -> int:
    from lakehouse.bronze.reconcile import reconcile

    report = reconcile(_spark(settings), settings).cache()
    progress.step("compare", "ledger with bronze and quarantine rows per file")
    totals = report.agg(F.count("*").alias("files"), F.sum(F.col("balanced").cast("int")).alias("balanced"),
                        F.sum("rows_landed").alias("landed"), F.sum("bronze_rows").alias("bronze"),
                        F.sum("rows_quarantined").alias("quarantined"),
                        F.sum("quarantine_rows").alias("in_quarantine")).first()
    print(f"reconcile: {totals.balanced or 0}/{totals.files} landed files balance; ledger rows landed "
          f"{totals.landed or 0}, bronze rows {totals.bronze or 0}; ledger rows quarantined "
          f"{totals.quarantined or 0}, quarantine rows {totals.in_quarantine or 0}")
    for row in report.where(~F.col("balanced")).orderBy("path").limit(20).collect():  # at most 20 lines
        print(f"  MISMATCH {row.path} batch={row.batch_id}: read={row.rows_read} landed={row.rows_landed} "
              f"quarantined={row.rows_quarantined} in bronze={row.bronze_rows} in quarantine={row.quarantine_rows}")
    return 0 if totals.files == (totals.balanced or 0) else 1


def _vocab_coverage(args, settings: Settings) -> int:
    from lakehouse.silver.report import coverage, top_unmapped

    spark = _spark(settings)
    rows = coverage(spark, settings.root).orderBy("hospital_id", "entity").collect()  # hospitals x entities
    print(f"{'hospital':<10}{'entity':<16}{'rows':>10}{'mapped':>10}{'coverage':>10}")
    for r in rows:
        print(f"{r.hospital_id:<10}{r.entity:<16}{r.rows:>10}{r.mapped:>10}{r.coverage:>10.2%}")
    unmapped = top_unmapped(spark, settings.root, args.top).orderBy("hospital_id", "entity", "rank").collect()
    if unmapped:
        print(f"top unmapped codes (at most {args.top} per hospital and entity):")
    for r in unmapped:
        print(f"  {r.hospital_id} {r.entity}: {r.source_code!s} ({r.source_name or ''}) x{r.rows}")
    return 0


def _dq_report(args, settings: Settings) -> int:
    from lakehouse.silver.report import dq_report

    report = dq_report(_spark(settings), settings.root, Path(args.out))
    print(f"wrote {report.path} ({report.runs} runs); failing in the latest run: {len(report.failing)}")
    for table, rule, hospital in report.failing[:20]:
        print(f"  FAIL {table}.{rule} at {hospital}")
    return 0


def _status(args, settings: Settings) -> int:
    import json

    from lakehouse.status import status

    found = status(_spark(settings, register=False), settings)  # reads the logs, not the tables
    print(json.dumps(found.as_dict(), default=str, indent=2) if args.json else found.render())
    return 0


def _server_argv(args, settings: Settings, *options: str) -> list[str]:
    """The foreground command a detached server runs: this one, with the settings resolved."""
    argv = [args.command, "--foreground", "--conf-dir", str(settings.conf_dir), "--env", settings.env,
            "--root", settings.root, "--log-format", "json"]
    for option in options:
        value = getattr(args, option.replace("-", "_"))
        argv += [f"--{option}", str(value)] if value is not None else []
    return argv


def _stop(daemon, what: str) -> int:
    print(f"stopped the {what}" if daemon.stop() else f"the {what} was not running")
    return 0


def _serve_sql(args, settings: Settings) -> int:
    from lakehouse.services import sql

    if args.stop:
        return _stop(sql.daemon(settings), "SQL endpoint")
    if args.foreground:
        sql.serve(settings, args.thrift_port, args.connect_port)
        return 0
    found = sql.start(settings, _server_argv(args, settings, "thrift-port", "connect-port"))
    print(f"SQL endpoint up, {len(found['tables'])} tables registered (silver and gold as <layer>.<table>):\n"
          f"  JDBC/ODBC (BI tools, beeline): {found['jdbc']}\n"
          f"      user: a token holder's name, password: their token (`lakehouse api-token`; roles that may read\n"
          f"      every served table whole only, i.e. admin)\n"
          f"  Spark Connect (notebooks):     SparkSession.builder.remote(\"{found['connect']}/;token=<token>\")\n"
          f"      the token: {found['connect_token_file']} (readable by you only)\n"
          f"  every login and statement goes to ops.audit_log\n"
          f"  log: {sql.daemon(settings).log_file}; stop: lakehouse serve-sql --stop")
    return 0


def _serve_api(args, settings: Settings) -> int:
    from lakehouse import access
    from lakehouse.services import api

    if args.stop:
        return _stop(api.daemon(settings), "API")
    tokens = access.load_tokens(settings)  # a bad tokens file is refused here, naming the key
    if args.foreground:
        api.serve(settings, args.port)
        return 0
    found = api.start(settings, _server_argv(args, settings, "port"), args.port)
    print(f"API up at {found['url']} (OpenAPI: {found['openapi']}, docs: {found['docs']})\n"
          f"  {len(tokens)} tokens in {access.tokens_file(settings)}"
          + ("" if tokens else ": issue one with `lakehouse api-token --name NAME --role ROLE`")
          + f"\n  log: {api.daemon(settings).log_file}; stop: lakehouse serve-api --stop")
    return 0


def _api_token(args, settings: Settings) -> int:
    from lakehouse import access

    token, file = access.add_token(settings, args.name, args.role, args.hospital)
    print(f"token for {args.name} ({args.role}{' at ' + args.hospital if args.hospital else ''}), shown once:\n"
          f"  {token}\nits SHA-256 is in {file}; send it as `Authorization: Bearer <token>`")
    return 0


def _cluster(args, settings: Settings) -> int:
    from lakehouse.cluster import Cluster

    cluster = Cluster.of(settings)
    if args.action == "down":
        stopped = cluster.down()
        print(f"stopped {', '.join(stopped)}" if stopped else f"no cluster was running from {cluster.folder}")
        return 0
    if args.action == "up":
        state = cluster.up()
        print(f"cluster up: master {cluster.master_url} with {len(cluster.alive_workers(state))} workers alive "
              f"(status: {cluster.status_url}; logs: {cluster.folder / 'logs'}; stop: lakehouse cluster down)")
        return 0
    if args.action == "package":
        print(cluster.package())
        return 0
    state = cluster.state()
    if args.action == "status":
        if state is None:
            print(f"no master answers at {cluster.status_url}")
            return 1
        print(f"master {cluster.master_url}: {state.get('status')}, {len(cluster.alive_workers(state))} workers alive, "
              f"{len(state.get('activeapps', []))} applications running, {len(state.get('completedapps', []))} done")
        return 0
    if not args.stage:
        raise UsageError("cluster submit needs a stage: lakehouse cluster submit run-all [--landing DIR]")
    if state is None:
        raise UsageError(f"no master answers at {cluster.status_url}: start the cluster first (lakehouse cluster up)")
    command = cluster.submit_command(args.stage, settings, args.env, args.stage_args)
    print("$ " + " ".join(command), file=sys.stderr, flush=True)
    return subprocess.call(command, env=cluster.submit_env())


def _export(args, settings: Settings) -> int:
    from lakehouse.research_export import export_cohort

    settings.cohort(args.cohort)
    summary = export_cohort(_spark(settings), settings, args.cohort, args.purpose, args.out)
    print(f"exported {summary.rows_out} rows ({summary.persons_out} persons) of cohort {summary.cohort} to "
          f"{args.out}: k={summary.k} achieved {summary.k_achieved} at level {summary.level} "
          f"({summary.generalisation}); {summary.rows_suppressed} of {summary.rows_in} rows suppressed; "
          f"risk summary in {args.out}/risk_summary.json")
    return 0


def _rollback(args, settings: Settings) -> int:
    from lakehouse.rollback import rollback

    rollback(_spark(settings), settings, args.run, args.force)
    return 0


def _erase(args, settings: Settings) -> int:
    from lakehouse.erasure import erase

    done = erase(_spark(settings), settings, args.person, args.reason)
    print(f"erased the person from {len(done.deleted)} tables ({sum(done.deleted.values())} rows, "
          f"{done.records} hospital records; run {done.run_id}):")
    for table, rows in sorted(done.deleted.items()):
        print(f"  {table:<40} {rows} rows")
    for table in done.unlinked:
        print(f"  {table:<40} other persons' rows no longer name them")
    print(f"earlier table versions still hold them until `lakehouse vacuum` runs {done.retention_hours} h from now. "
          "Outside the lakehouse, for the operator: models trained before today saw their data, and "
          f"{len(done.landing_files)} landing files still hold their records:")
    for file in done.landing_files:
        print(f"  {file}")
    return 0


def _vacuum(args, settings: Settings) -> int:
    from lakehouse.erasure import vacuum

    tables = vacuum(_spark(settings), settings, args.table, args.full)
    print(f"vacuumed {len(tables)} tables with {settings.main.erasure.retention_hours} h retention")
    return 0


def _audit_verify(args, settings: Settings) -> int:
    from deltalake import DeltaTable

    from lakehouse.catalog import AUDIT_LOG
    from lakehouse.services import audit

    if not DeltaTable.is_deltatable(AUDIT_LOG.path(settings.root)):
        print(f"{AUDIT_LOG.qualified} is empty: nothing has been audited under {settings.root}")
        return 0
    verdict = audit.verify(settings.root)
    if verdict.ok:
        print(f"{AUDIT_LOG.qualified}: {verdict.entries} entries in {verdict.writers} chains, every chain intact")
        return 0
    print(f"error: {AUDIT_LOG.qualified} has been tampered with: {len(verdict.breaks)} of {verdict.writers} chains "
          f"broken; the first broken entry is\n  {verdict.breaks[0]}", file=sys.stderr)
    for later in verdict.breaks[1:]:
        print(f"  also: {later}", file=sys.stderr)
    return 1


def _init_secrets(args, settings: Settings) -> int:
    file, created = secrets.init_secrets(settings)
    print(f"{'created' if created else 'kept existing'} secrets file {file}")
    return 0


# their start, end and outputs are reported by the job run they log (ops.job_run); the other commands get a
# start and an end of their own
LOGGED_JOBS = {"ingest", "refine", "link", "build", "cohort", "export-meds", "train", "score", "rollback", "erase",
               "vacuum"}

COMMANDS: dict[str, Callable] = {
    "generate": _generate,
    "ingest": _ingest,
    "validate-source": _validate_source,
    "refine": _refine,
    "link": _link,
    "vault": _vault,
    "pii-scan": _pii_scan,
    "build": _build,
    "cohort": _cohort,
    "export-meds": _export_meds,
    "train": _train,
    "score": _score,
    "run-all": _run_all,
    "reconcile": _reconcile,
    "vocab-coverage": _vocab_coverage,
    "dq-report": _dq_report,
    "init-secrets": _init_secrets,
    "status": _status,
    "serve-sql": _serve_sql,
    "serve-api": _serve_api,
    "api-token": _api_token,
    "cluster": _cluster,
    "audit-verify": _audit_verify,
    "rollback": _rollback,
    "export": _export,
    "erase": _erase,
    "vacuum": _vacuum,
}


if __name__ == "__main__":
    sys.exit(main())
