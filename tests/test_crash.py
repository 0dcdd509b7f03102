"""Kill tests: `lakehouse ingest` (its own process group, a real JVM) is killed with SIGKILL once held between
two Delta commits and once at a seeded moment after its first commit (each trial checks a partial commit really
landed), then run again: the job's lock still names the killed run, so the new run first restores the tables it
had written, and the final bronze, quarantine and ledger equal those of an uninterrupted run and reconcile.
`make chaos` runs more seeded trials (CHAOS_TRIALS)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from chispa import assert_df_equality
from conftest import CONF
from pyspark.sql import functions as F

from lakehouse import chaos, io, pipeline
from lakehouse.bronze.reconcile import reconcile
from lakehouse.catalog import BRONZE, INGEST_LEDGER, JOB_RUN, QUARANTINE

TRIALS = [("held", 2)] + [("seeded", seed) for seed in range(int(os.environ.get("CHAOS_TRIALS", "1")))]
VOLATILE = ("_batch_id", "_ingested_at", "batch_id", "quarantined_at", "ingested_at")


def _state(spark, root: str) -> dict:
    tables = {}
    for ref in (*BRONZE.values(), QUARANTINE):
        if io.exists(spark, ref, root):
            df = io.read(spark, ref, root)
            df = df.drop(*[c for c in VOLATILE if c in df.columns])
            tables[ref.qualified] = df.withColumn("_extra", F.to_json("_extra")) if "_extra" in df.columns else df
    ledger = io.read(spark, INGEST_LEDGER, root).select("path", "sha256", "status", "rows_read", "rows_landed",
                                                        "rows_quarantined")
    return {**tables, INGEST_LEDGER.qualified: ledger}


@pytest.fixture(scope="module")
def landing(region, tmp_path_factory):
    folder = tmp_path_factory.mktemp("crash") / "landing"
    day = sorted(p.name for p in (region.landing / "H04").iterdir())[0]
    for hospital in ("H04", "H05"):  # HL7, gzip CSV and FHIR: ten Delta commits, a few seconds each
        shutil.copytree(region.landing / hospital / day, folder / hospital / day)
    return folder


@pytest.fixture(scope="module")
def reference(spark, settings, landing, tmp_path_factory):
    local = settings.model_copy(update={"root": str(tmp_path_factory.mktemp("reference") / "root")})
    pipeline.run_ingest(spark, local, str(landing))
    return _state(spark, local.root)


@pytest.mark.parametrize(("mode", "value"), TRIALS, ids=[f"{m}-{v}" for m, v in TRIALS])
def test_a_killed_ingest_reruns_to_the_uninterrupted_result(spark, settings, landing, reference, tmp_path, mode,
                                                            value):
    root, ready = str(tmp_path / "root"), tmp_path / "commits.txt"
    env = {**os.environ, chaos.READY_ENV: str(ready), **({chaos.HOLD_ENV: str(value)} if mode == "held" else {})}
    job = subprocess.Popen([sys.executable, "-m", "lakehouse.cli", "ingest", "--conf-dir", str(CONF), "--root", root,
                            "--landing", str(landing)], env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wanted = value if mode == "held" else 1
        deadline = time.monotonic() + 300
        while not (ready.exists() and len(ready.read_text().splitlines()) >= wanted):
            assert job.poll() is None and time.monotonic() < deadline, "the job ended before its commits"
            time.sleep(0.2)
        if mode == "seeded":
            time.sleep(random.Random(value).uniform(0, 4))
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    assert job.returncode == -signal.SIGKILL  # killed, not finished
    commits = ready.read_text().splitlines()
    partial = commits[0].split()[1]
    assert len(commits) >= 1 and io.latest_version(spark, io.TableRef(*partial.split("."), ""), root) is not None
    assert not io.exists(spark, JOB_RUN, root) or io.read(spark, JOB_RUN, root).count() == 0  # no run finished

    local = settings.model_copy(update={"root": root})
    run = pipeline.run_ingest(spark, local, str(landing))
    assert any(n.startswith("recovered from killed run") for n in run.notes), run.notes
    state = _state(spark, root)
    assert sorted(state) == sorted(reference)
    for table, expected in reference.items():
        assert_df_equality(state[table], expected, ignore_row_order=True, ignore_nullable=True,
                           ignore_column_order=True)
    assert reconcile(spark, local).where(~F.col("balanced")).count() == 0
    assert not Path(root, "_locks", "ingest.lock").read_text()  # released, naming no run
