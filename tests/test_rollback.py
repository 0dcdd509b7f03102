"""`lakehouse rollback --run RUN_ID`: the tables a run wrote go back to their versions before it, found by the
run's tag on its Delta commits; a rollback that would undo a later run is refused unless forced; a table the run
created is emptied; the rollback is a logged run of its own. Small tables in a private root, real Delta."""

from __future__ import annotations

import pytest
from chispa import assert_df_equality
from conftest import CONF
from delta.tables import DeltaTable
from pyspark.sql import functions as F

from lakehouse import cli, io, locks
from lakehouse.catalog import JOB_RUN, TableRef
from lakehouse.config import load_settings
from lakehouse.errors import UsageError
from lakehouse.rollback import RollbackRefused, rollback
from lakehouse.runlog import JobRun, KilledRunWaiting, commit_note

PROBE = TableRef("gold", "probe", "id INT, v STRING")
FRESH = TableRef("gold", "fresh", "id INT, v STRING")


@pytest.fixture
def private(tmp_path):
    return load_settings(CONF, "local", str(tmp_path / "root"))


def _rows(spark, *rows):
    return spark.createDataFrame(list(rows), PROBE.schema)


def _run(spark, settings, job, *writes) -> str:
    """A job run doing `writes` (functions of the run) and returning its run id."""
    with JobRun(spark, settings, job) as run:
        for write in writes:
            run.wrote(write())
    return run.run_id


def _probe(spark, settings):
    return io.read(spark, PROBE, settings.root)


def test_rollback_restores_what_a_run_wrote_and_refuses_to_undo_later_runs(spark, private):
    root = private.root
    first = _run(spark, private, "probe-a", lambda: io.append(spark, _rows(spark, (1, "a"), (2, "b")), PROBE, root))
    bad = _run(spark, private, "probe-b",
               lambda: io.overwrite(spark, _rows(spark, (1, "x")), PROBE, root),
               lambda: io.append(spark, _rows(spark, (3, "c")), PROBE, root))
    assert first != bad and _probe(spark, private).count() == 2

    done = rollback(spark, private, bad)
    assert_df_equality(_probe(spark, private), _rows(spark, (1, "a"), (2, "b")), ignore_row_order=True)
    last = DeltaTable.forPath(spark, PROBE.path(root)).history(1).first()
    assert (last.version, last.operation, last.userMetadata) == (3, "RESTORE", f"lakehouse-run:{done.run_id}")
    logged = io.read(spark, JOB_RUN, root).where(F.col("run_id") == done.run_id).first()
    assert logged.job == "rollback" and logged.status == "succeeded"
    assert [(o.table, o.version) for o in logged.outputs] == [("gold.probe", 3)]
    assert f"gold.probe: restored to version 0 (run {bad} wrote 1..2)" in logged.message

    # a later run wrote the table: rolling back the earlier one would undo it too
    early = _run(spark, private, "probe-c", lambda: io.append(spark, _rows(spark, (4, "d")), PROBE, root))
    later = _run(spark, private, "probe-d", lambda: io.append(spark, _rows(spark, (5, "e")), PROBE, root))
    with pytest.raises(RollbackRefused, match=f"gold.probe has commits of {later} after its first commit"):
        rollback(spark, private, early)
    assert cli.main(["rollback", "--run", early, "--conf-dir", str(CONF), "--root", root]) == 2
    assert _probe(spark, private).count() == 4  # refused before anything was restored
    rollback(spark, private, early, force=True)
    assert_df_equality(_probe(spark, private), _rows(spark, (1, "a"), (2, "b")), ignore_row_order=True)


def test_a_failed_run_is_rolled_back_and_a_rolled_back_run_no_longer_counts(spark, private):
    root = private.root
    _run(spark, private, "probe", lambda: io.append(spark, _rows(spark, (1, "a")), PROBE, root))
    with pytest.raises(RuntimeError), JobRun(spark, private, "probe") as failing:  # commits, then fails:
        io.append(spark, _rows(spark, (2, "half")), PROBE, root)                  # ops.job_run lists no outputs
        raise RuntimeError("the job died after its first commit")
    logged = io.read(spark, JOB_RUN, root).where(F.col("run_id") == failing.run_id).first()
    assert logged.status == "failed" and logged.outputs == []
    rollback(spark, private, failing.run_id)
    assert_df_equality(_probe(spark, private), _rows(spark, (1, "a")), ignore_row_order=True)

    # the last successful run of a job is the one its next run compares against (skip, or build an increment
    # from): a rolled-back run must not be it
    with JobRun(spark, private, "reader") as first:
        first.read(io.Written("gold.probe", 0, 1))
    with JobRun(spark, private, "reader") as second:
        second.read(io.Written("gold.probe", 3, 1))
        second.wrote(io.append(spark, _rows(spark, (9, "z")), PROBE, root))
    assert JobRun(spark, private, "reader").previous_inputs() == {"gold.probe": 3}
    rollback(spark, private, second.run_id)
    assert JobRun(spark, private, "reader").previous_inputs() == {"gold.probe": 0}


def test_rollback_empties_a_table_the_run_created_and_names_an_unknown_run(spark, private):
    created = _run(spark, private, "fresh", lambda: io.append(spark, _rows(spark, (1, "a")), FRESH, private.root))
    assert cli.main(["rollback", "--run", created, "--conf-dir", str(CONF), "--root", private.root]) == 0
    table = io.read(spark, FRESH, private.root)
    assert table.count() == 0 and table.columns == ["id", "v"]  # the schema and the history stay
    with pytest.raises(UsageError, match="has a commit of run 'nosuchrun', and ops.job_run has no such run"):
        rollback(spark, private, "nosuchrun")


def _killed(spark, settings, job: str, run_id: str, table):
    """A run of `job` killed after its first commit: the commit carries its tag, the job's lock file still names
    it (as `kill -9` leaves them); the lock file."""
    with commit_note(spark, run_id):
        io.append(spark, _rows(spark, (1, "half-written")), table, settings.root)
    lock = locks.lock_path(settings.root, job)
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(f"run {run_id}: pid 1 on elsewhere since 2026-11-30T00:00:00+00:00\n")
    return lock


def test_a_killed_run_is_undone_by_the_next_run_of_its_job_or_stays_named_until_it_can_be(spark, private):
    lock = _killed(spark, private, "probe", "deadbeef", PROBE)
    later = "late0001"  # a run that wrote the table anyway (a job run would be refused while deadbeef waits)
    with commit_note(spark, later):
        io.append(spark, _rows(spark, (2, "later")), PROBE, private.root)
    with pytest.raises(RollbackRefused, match="probe run deadbeef was killed part way.*gold.probe: " + later), \
            JobRun(spark, private, "probe"):
        raise AssertionError("the job body must not run")
    assert lock.read_text().startswith("run deadbeef:")  # still named: the next attempt refuses again
    rollback(spark, private, later)
    rollback(spark, private, "deadbeef", force=True)  # what the message says (the first rollback committed too)
    with JobRun(spark, private, "probe") as run:
        assert io.read(spark, PROBE, private.root).count() == 0  # the half-written row is gone before the body
    assert "killed run deadbeef was rolled back already" in run.notes
    assert lock.read_text() == ""


def test_the_next_run_of_a_killed_job_undoes_its_commits_first(spark, private):
    lock = _killed(spark, private, "fresh", "cafe0001", FRESH)
    with JobRun(spark, private, "fresh") as run:
        assert io.read(spark, FRESH, private.root).count() == 0  # undone before the body runs
    recovered = "recovered from killed run cafe0001: restored gold.fresh (emptied)"
    assert recovered in run.notes, run.notes
    assert lock.read_text() == ""


def test_another_jobs_killed_run_holds_back_every_job_until_it_is_undone(spark, private):
    """A killed refine waits for its next run to undo it; a link run in between would write the same silver
    tables and leave that undo refused, so link (and every job but a rollback) is refused until then."""
    refine_lock = _killed(spark, private, "refine", "feed0001", PROBE)
    own_lock = _killed(spark, private, "probe", "feed0002", FRESH)
    with pytest.raises(KilledRunWaiting, match="refine run feed0001 was killed part way and is not undone yet: "
                                               "probe would write") as refused, JobRun(spark, private, "probe"):
        raise AssertionError("the job body must not run")
    assert refused.value.exit_code == 75
    assert own_lock.read_text().startswith("run feed0002:")  # its own killed run is still named, not forgotten
    assert refine_lock.read_text().startswith("run feed0001:")
    assert io.read(spark, FRESH, private.root).count() == 1  # and nothing was undone yet

    rollback(spark, private, "feed0001")  # a rollback is the way out: it is never held back
    with JobRun(spark, private, "probe") as run:  # refine's killed run is undone: probe recovers its own and runs
        assert io.read(spark, FRESH, private.root).count() == 0
    assert any("recovered from killed run feed0002" in n for n in run.notes), run.notes
    # neither a run killed before its first commit (nothing to undo) nor another task's killed run (each task
    # writes its own tables) holds a task back
    nothing = locks.lock_path(private.root, "link")
    nothing.write_text("run feed0003: pid 1 on elsewhere since 2026-11-30T00:00:00+00:00\n")
    _killed(spark, private, "probe:b", "feed0004", FRESH)
    with JobRun(spark, private, "probe:a"):
        pass
