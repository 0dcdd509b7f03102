"""`lakehouse.access`: every role of conf/access.yaml against every layer of the shared region, hidden columns,
the clinician's hospital scope, and the audit row every read leaves (refused ones too); jobs run only as an admin
and one run of a job at a time (the lock is held across processes)."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from chispa import assert_df_equality
from conftest import CONF
from deltalake import DeltaTable
from pyspark.sql import functions as F

from lakehouse import access, io, locks
from lakehouse.catalog import AUDIT_LOG, ENCOUNTER, JOB_RUN, NOTE, PATIENT_SUMMARY
from lakehouse.config import load_settings
from lakehouse.runlog import JobRun
from lakehouse.services.store import run as delta_query

ALLOWED = {  # one table per layer (two in gold and silver) -> the roles that may read it
    "bronze.patient": {"admin"},
    "silver.encounter": {"admin", "clinician", "researcher"},
    "silver.person_link": {"admin", "clinician"},
    "gold.patient_summary": {"admin", "clinician", "researcher"},
    "gold.indicator_inpatient_daily": {"admin", "clinician", "researcher", "analyst"},
    "ops.job_run": {"admin"},
    "vault.identity": {"admin"},
}
ROLES = {"admin": None, "clinician": "H01", "researcher": None, "analyst": None}


def _audit_rows(root: str, purpose: str) -> list[dict]:
    return delta_query(f"SELECT * FROM log WHERE purpose = '{purpose}' ORDER BY seq",
                       log=DeltaTable(AUDIT_LOG.path(root))).to_pylist()


def _reader(spark, settings, role: str) -> tuple[access.Reader, str]:
    purpose = f"access test {uuid.uuid4().hex[:8]}"
    who = access.Principal("tester", role, ROLES[role])
    return access.Reader(spark, settings, who, purpose), purpose


@pytest.mark.parametrize("role", sorted(ROLES))
def test_every_role_against_every_layer(region, spark, settings, role):
    reader, purpose = _reader(spark, settings, role)
    for table, roles in ALLOWED.items():
        if role in roles:
            assert reader.table(table).columns, table
        else:
            with pytest.raises(access.AccessDenied, match=f"role {role} may not read {table}"):
                reader.table(table)
    rows = _audit_rows(settings.root, purpose)
    assert [(r["target"], r["status"]) for r in rows] == [(t, 0 if role in roles else 403)
                                                          for t, roles in ALLOWED.items()]
    assert all(r["actor"] == "tester" and r["role"] == role and r["action"] == "read" for r in rows)
    assert all(r["outcome"].startswith("refused: role") for r in rows if r["status"] == 403)
    ok = [r for r in rows if r["status"] == 0]
    assert all(dict(r["versions"])[r["target"]] >= 0 and r["columns"] for r in ok)


def test_the_researcher_never_sees_a_hidden_column(region, spark, settings):
    reader, purpose = _reader(spark, settings, "researcher")
    note = reader.table("silver.note")
    assert "person_key" in note.columns and "note_time" in note.columns
    assert not {"note_text", "patient_key", "source_id", "source_file", "source_line"} & set(note.columns)
    with pytest.raises(access.AccessDenied, match=r"may not read silver.note.note_text \(hidden_columns"):
        reader.table("silver.note", columns=["person_key", "note_text"])
    with pytest.raises(access.AccessDenied):
        reader.table("silver.person_event")  # except_tables
    ok, refused, _ = _audit_rows(settings.root, purpose)
    assert ok["columns"] == note.columns and ok["rows"] == io.describe(spark, NOTE, settings.root).rows
    assert refused["status"] == 403 and refused["columns"] is None


def test_a_clinician_sees_the_persons_of_their_hospital_only(region, spark, settings):
    reader, purpose = _reader(spark, settings, "clinician")
    summary = reader.table(PATIENT_SUMMARY.qualified, columns=["person_key"])
    at_h01 = (io.read(spark, ENCOUNTER, settings.root).where(F.col("hospital_id") == "H01")
              .select("person_key").distinct())
    expected = io.read(spark, PATIENT_SUMMARY, settings.root).select("person_key").join(at_h01, "person_key")
    assert_df_equality(summary, expected, ignore_row_order=True)
    everyone = io.read(spark, PATIENT_SUMMARY, settings.root).count()
    assert 0 < summary.count() < everyone
    daily = reader.table("gold.indicator_inpatient_daily")
    assert {r.hospital_id for r in daily.select("hospital_id").distinct().collect()} == {"H01"}
    with pytest.raises(access.AccessDenied, match="neither person_key nor hospital_id"):
        reader.table("gold.cohort_attrition")
    first = _audit_rows(settings.root, purpose)[0]
    assert first["hospital_id"] == "H01" and first["tables"] == [PATIENT_SUMMARY.qualified, ENCOUNTER.qualified]


def test_the_policy_refuses_bad_names_and_an_undeclared_purpose(region, spark, settings):
    reader, purpose = _reader(spark, settings, "admin")
    with pytest.raises(access.UsageError, match="not <layer>.<table>"):
        reader.table("patient")
    with pytest.raises(access.UsageError, match="has no column nope"):
        reader.table("gold.patient_summary", columns=["nope"])
    assert [r["status"] for r in _audit_rows(settings.root, purpose)] == [403, 403]
    with pytest.raises(access.UsageError, match="declared purpose"):
        access.Reader(spark, settings, access.Principal("x", "admin"), " ")
    with pytest.raises(access.UsageError, match="unknown role 'dean'"):
        access.current(settings, role="dean")


@pytest.fixture
def private(tmp_path):
    return load_settings(CONF, "local", str(tmp_path / "root"))


def test_a_job_runs_as_an_admin_only_and_every_run_is_audited(spark, private, monkeypatch):
    monkeypatch.setenv(access.ROLE_ENV, "researcher")
    with pytest.raises(access.AccessDenied, match="running probe needs an admin role"), \
            JobRun(spark, private, "probe"):
        raise AssertionError("the job body must not run")
    monkeypatch.setenv(access.ROLE_ENV, "admin")
    monkeypatch.setenv(access.USER_ENV, "operator1")
    with JobRun(spark, private, "probe") as run:
        run.note("did nothing")
    rows = delta_query("SELECT * FROM log WHERE action = 'job' ORDER BY at",
                       log=DeltaTable(AUDIT_LOG.path(private.root))).to_pylist()
    assert [(r["role"], r["status"], r["outcome"].split(":")[0]) for r in rows] == [
        ("researcher", 403, "failed"), ("admin", 0, "succeeded")]
    assert rows[1]["actor"] == "operator1" and rows[1]["target"] == f"probe run {run.run_id}"
    assert io.read(spark, JOB_RUN, private.root).select("run_id").collect() == [(run.run_id,)]  # refused: no run


def test_a_second_run_of_a_job_is_refused_while_another_process_runs_it(spark, private):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom lakehouse import locks\n"
         f"with locks.exclusive({private.root!r}, 'probe'):\n    print('held', flush=True)\n    time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        busy = rf"probe is already running under this root \(run -: pid {holder.pid} on"
        with pytest.raises(locks.JobBusy, match=busy), JobRun(spark, private, "probe"):
            raise AssertionError("the job body must not run")
        with JobRun(spark, private, "other"):  # another job is not held up
            pass
    finally:
        holder.kill()
        holder.wait()
    with JobRun(spark, private, "probe") as run:  # the kernel released the killed holder's lock
        run.note("ran")
    assert locks.lock_path(private.root, "probe").read_text() == ""
