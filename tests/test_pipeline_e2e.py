"""End to end on the shared tiny region: every layer, the registry, predictions, and a no-op re-run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from conftest import CONF, PROJECT, TEST_KEYS
from delta.tables import DeltaTable
from pyspark.sql import functions as F

from lakehouse import io
from lakehouse.catalog import (
    AUDIT_LOG,
    BRONZE,
    ENCOUNTER,
    IDENTITY,
    JOB_RUN,
    PERSON,
    QUARANTINE,
    SILVER,
    TIMELINE,
)
from lakehouse.cli import main
from lakehouse.ml.train import current
from lakehouse.status import status
from lakehouse.synth.dialects import dialect_for
from lakehouse.synth.generator import read_truth

pytestmark = pytest.mark.e2e
TASK = "readmission_30d"


def _versions(spark, root) -> dict[str, int]:
    return {ref.qualified: io.latest_version(spark, ref, root) for ref in io.register_all(spark, root)}


def _contracted(region) -> dict[str, set[str]]:
    """hospital -> entities its source contract reads."""
    return {h: set(c.entities) for h, c in region.settings.sources.items()}


def test_a_new_column_in_a_later_export_is_kept_not_dropped(spark, region):
    drift = read_truth(region.truth, "defects").query("kind == 'schema_drift'").iloc[0]
    encounters = io.read(spark, BRONZE["encounter"], region.settings.root)
    kept = encounters.where(F.col("_source_file").endswith(drift["file"])).where(F.col("_extra")["remark"] == "复核")
    assert kept.count() > 0


def test_tables_are_real_delta_and_registered_in_the_catalog(spark, region):
    root = region.settings.root
    for ref in (*BRONZE.values(), *SILVER.values(), IDENTITY, TIMELINE, JOB_RUN):
        assert (Path(ref.path(root)) / "_delta_log").is_dir(), ref.qualified
    operations = [r.operation for r in spark.sql(f"DESCRIBE HISTORY {ENCOUNTER.qualified}").collect()]
    assert operations[-1] == "WRITE"
    assert spark.table("silver.encounter").count() == io.read(spark, ENCOUNTER, root).count() > 0
    assert spark.table("gold.patient_timeline").count() > 0


def test_silver_is_pseudonymous_and_links_one_person_across_hospitals(spark, region):
    root = region.settings.root
    person = io.read(spark, PERSON, root)
    assert not {"name", "national_id", "phone", "address", "mrn", "birth_date"} & set(person.columns)
    contracted = [h for h, entities in _contracted(region).items() if "patient" in entities]
    records = read_truth(region.truth, "patient_records")
    records = records[records["hospital_id"].isin(contracted)]
    truth = read_truth(region.truth, "defects").query("entity == 'patient'")
    defects = truth[(truth["kind"] == "missing_required") & truth["hospital_id"].isin(contracted)]
    # a patient line bronze quarantined is lost to silver, unless the record came again on another line
    landed = {(r._hospital_id, r.mrn) for r in io.read(spark, BRONZE["patient"], root).select(
        "_hospital_id", "mrn").distinct().collect()}
    quarantined = truth[truth["kind"].isin(["truncated_line", "wrong_encoding_line", "invalid_json"])]
    lost = {(r.hospital_id, r.record_id) for r in quarantined.itertuples()} - landed
    assert len(defects) > 0  # records sent without their MRN: each kept apart by its file and line, and flagged
    assert person.count() == len(records) - len(lost)
    # H05's FHIR Patient.id says "unknown" for a patient sent without an MRN: a value, so not flagged
    flagged = person.where(F.array_contains("dq_flags", "person_has_mrn")).count()
    assert flagged == len(defects[defects["hospital_id"] != "H05"]) > 0
    multi_hospital = records.groupby("person_id")["hospital_id"].nunique().gt(1).sum()
    persons_linked = person.groupBy("person_key").agg(F.countDistinct("hospital_id").alias("n")).where("n > 1").count()
    assert 0.95 * multi_hospital <= persons_linked <= multi_hospital  # the person index; test_identity measures it


def test_vault_holds_ciphertext_that_only_the_key_opens(spark, region):
    vault = io.read(spark, IDENTITY, region.settings.root)
    assert dict(vault.dtypes)["name_enc"] == "binary"
    sample = vault.select("name_enc").first().name_enc
    contracted = list(_contracted(region))
    records = read_truth(region.truth, "patient_records")
    native = [h for h in contracted if not dialect_for(int(h[1:]) - 1).pinyin_names]  # H05 writes names in pinyin
    names = set(records[records["hospital_id"].isin(native)]["name"])
    assert not any(name.encode() in bytes(sample) for name in names)
    key = bytes.fromhex(TEST_KEYS["LAKEHOUSE_VAULT_KEY"])
    opened = {r.name for r in vault.select(F.aes_decrypt("name_enc", F.lit(key), F.lit("GCM"))
                                           .cast("string").alias("name")).collect()}
    assert len(opened & names) >= 0.98 * len(names)  # the rest: names on lines planted broken
    wrong = F.try_aes_decrypt("name_enc", F.lit(bytes(32)), F.lit("GCM"))
    assert vault.select(wrong.alias("x")).where("x IS NOT NULL").count() == 0


def test_job_runs_are_logged_with_config_and_io(spark, region):
    runs = io.read(spark, JOB_RUN, region.settings.root)
    jobs = {r.job for r in runs.where("status = 'succeeded'").collect()}
    assert {"ingest", "refine", "link", "build", f"train:{TASK}", f"score:{TASK}"} <= jobs
    refine = runs.where("job = 'refine' AND status = 'succeeded'").orderBy("started_at").first()
    assert refine.config_hash == region.settings.config_hash
    assert {o.table for o in refine.outputs} >= {"silver.person", "silver.encounter", "vault.identity"}


def test_second_run_all_through_the_cli_changes_nothing(spark, region, capsys):
    settings = region.settings
    before = _versions(spark, settings.root)
    model_versions = len(mlflow.MlflowClient().search_model_versions(f"name='{settings.tasks[TASK].model_name}'"))
    code = main(["run-all", "--conf-dir", str(CONF), "--root", settings.root, "--landing", str(region.landing)])
    assert code == 0
    out = capsys.readouterr().out
    assert "lakehouse run-all summary" in out and "models:/lakehouse_readmission_30d@champion" in out
    after = _versions(spark, settings.root)
    changed = {t for t in after if after[t] != before.get(t)}
    assert changed == {JOB_RUN.qualified, AUDIT_LOG.qualified}  # every run is logged and audited
    assert len(mlflow.MlflowClient().search_model_versions(
        f"name='{settings.tasks[TASK].model_name}'")) == model_versions


def test_status_shows_every_table_with_its_version_and_rows_the_runs_quarantine_and_champions(spark, region, capsys):
    settings = region.settings
    found = status(spark, settings)
    # versions from the log's newest commit, rows from ops.job_run: both equal what Delta itself says
    truth = {ref.qualified: (DeltaTable.forPath(spark, ref.path(settings.root)).history(1).first().version,
                             io.read(spark, ref, settings.root).count())
             for ref in io.list_tables(spark, settings.root)}
    assert {f"{t.layer}.{t.name}": (t.version, t.rows) for t in found.tables} == truth
    assert {"bronze.encounter", "silver.person", "gold.patient_timeline", f"gold.predictions_{TASK}",
            "ops.job_run", "vault.identity"} <= set(truth)
    log = io.read(spark, JOB_RUN, settings.root).select("job", "status", "ended_at").toPandas()
    latest = log.sort_values("ended_at").groupby("job")["status"].last().to_dict()
    assert {r.job: r.status for r in found.runs} == latest  # the last run of every job (a re-run may be skipped)
    assert {"ingest", "refine", "link", "build"} <= set(latest)
    quarantined = io.read(spark, QUARANTINE, settings.root).groupBy("hospital_id", "layer").count().collect()
    assert found.quarantine == {h: {r.layer: r["count"] for r in quarantined if r.hospital_id == h}
                                for h in {r.hospital_id for r in quarantined}}
    champion = current(settings, settings.tasks[TASK])
    assert [c.version for c in found.champions if c.task == TASK] == [champion.version]

    assert main(["status", "--conf-dir", str(CONF), "--root", settings.root]) == 0
    out = capsys.readouterr().out
    assert f"models:/lakehouse_{TASK}@champion = v{champion.version}" in out
    timeline = truth[TIMELINE.qualified]
    assert f"{TIMELINE.qualified:<40} rows={timeline[1]:<10} v{timeline[0]:<5}" in out


def test_spark_submit_runs_a_job_as_the_readme_says(region, tmp_path):
    """`spark-submit jobs/ingest.py --conf-dir conf --env local` from the venv: Delta comes from the
    spark-defaults.conf that `make setup` wrote, the code from the same CLI."""
    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}", "PYSPARK_PYTHON": sys.executable,
           "SPARK_LOCAL_IP": "127.0.0.1"}
    root, landing = tmp_path / "submitted", tmp_path / "landing"
    day = sorted(p.name for p in (region.landing / "H01").iterdir())[0]
    (landing / "H01" / day).mkdir(parents=True)
    for file in (region.landing / "H01" / day).glob("patient*"):  # one file is enough here
        shutil.copy(file, landing / "H01" / day / file.name)
    done = subprocess.run([str(venv_bin / "spark-submit"), "--master", "local[1]", "jobs/ingest.py",
                           "--conf-dir", "conf", "--env", "local", "--root", str(root),
                           "--landing", str(landing)],
                          cwd=PROJECT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "== ingest succeeded" in done.stdout
    assert (root / "bronze" / "patient" / "_delta_log").is_dir()
    assert (root / "ops" / "job_run" / "_delta_log").is_dir()
    # a scheduler's log, not a terminal: progress arrives as JSON lines (spark-submit's Python runner merges
    # the job's stderr into its stdout)
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"event"')]
    assert [e["event"] for e in events][0] == "start" and events[-1]["event"] == "end"
    assert {e["table"] for e in events if e["event"] == "wrote"} >= {"bronze.patient", "ops.ingest_ledger"}


def test_reconcile_balances_and_names_a_file_that_lost_a_row(spark, region, capsys):
    root = region.settings.root
    args = ["reconcile", "--conf-dir", str(CONF), "--root", root]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "landed files balance" in captured.out
    events = [json.loads(line) for line in captured.err.splitlines() if line.startswith('{"event"')]
    assert [(e["event"], e.get("stage"), e.get("status")) for e in events if e["event"] != "spark"][-2:] == [
        ("step", "compare", None), ("end", None, "succeeded")]
    vitals = DeltaTable.forPath(spark, BRONZE["vital_sign"].path(root))
    before = io.latest_version(spark, BRONZE["vital_sign"], root)
    victim = io.read(spark, BRONZE["vital_sign"], root).select("_source_file").first()[0]
    vitals.delete((F.col("_source_file") == victim) & (F.col("_source_line") == 2))
    try:
        assert main(args) == 1
        captured = capsys.readouterr()
        assert f"MISMATCH {victim}" in captured.out
        assert json.loads(captured.err.splitlines()[-2])["status"] == "failed"  # a check that found a problem
    finally:
        vitals.restoreToVersion(before)
