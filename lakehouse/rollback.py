"""`lakehouse rollback --run RUN_ID`: every table a run wrote goes back to its version before that run.

Each job run tags its Delta commits with `lakehouse-run:<run_id>` (the commit's userMetadata, set by `JobRun`;
refine and link add `; <what it was>`),
so a run's commits are found in each table's history by the tag, not by clocks, and a failed or killed run's
commits are found too. A table is restored (Delta RESTORE, one commit) to the version before the run's first
commit to it; a table the run created is emptied (a DELETE: it keeps its schema and history). When another run
committed to one of those tables after the bad run's first commit, restoring would undo that run too: the
rollback is refused, naming those runs, unless `force` is given. The rollback is itself a job run in
ops.job_run (its outputs the restored versions, its note the runs it undid, which no longer count as a job's
last successful run, so the next run of that job does not skip or build an increment from them), and its own
commits carry its tag.

MLflow's registered versions are not tables: a rolled-back `train` run's model version stays registered (the
note says which), and moving the champion alias back is the registry's own operation.
"""

from __future__ import annotations

from dataclasses import dataclass

from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse import io
from lakehouse.catalog import JOB_RUN, TableRef
from lakehouse.config import Settings
from lakehouse.errors import LakehouseError, UsageError
from lakehouse.runlog import ERASE_JOB, ERASE_RUN, ROLLBACK_JOB, UNDID, JobRun, run_of, undone_runs


class RollbackRefused(LakehouseError):
    """Rolling back would undo later runs too."""

    exit_code = 2


@dataclass(frozen=True)
class Step:
    table: str
    first: int  # the run's first commit to the table
    last: int  # its last
    later_runs: tuple[str, ...]  # runs that committed to the table after it

    @property
    def target(self) -> int | None:
        """The version to restore, or None when the run created the table."""
        return self.first - 1 if self.first > 0 else None


def plan(spark: SparkSession, settings: Settings, run_id: str) -> tuple[str, list[Step]]:
    """The job of `run_id` and what rolling it back restores: every table under the root with a commit tagged by
    the run (a failed or killed run's commits too, which ops.job_run may not list), from each table's history."""
    logged = (io.read(spark, JOB_RUN, settings.root).where(F.col("run_id") == run_id).select("job").first()
              if io.exists(spark, JOB_RUN, settings.root) else None)
    steps = []
    for ref in io.list_tables(spark, settings.root):
        if ref.qualified == JOB_RUN.qualified:  # the record of what ran stays
            continue
        # one row per commit of one table: read once, sorted out here
        history = DeltaTable.forPath(spark, ref.path(settings.root)).history().select("version", "userMetadata")
        commits = [(r.version, r.userMetadata) for r in history.collect()]
        mine = [version for version, by in commits if run_of(by) == run_id]
        if not mine:
            continue
        later = sorted({run_of(by) or "(untagged)" for version, by in commits
                        if version > min(mine) and run_of(by) != run_id})
        steps.append(Step(ref.qualified, min(mine), max(mine), tuple(later)))
    if not steps:
        raise UsageError(f"no table under {settings.root} has a commit of run {run_id!r}"
                         + ("" if logged else f", and {JOB_RUN.qualified} has no such run")
                         + ": `lakehouse status` shows the last run of each job")
    return (logged.job if logged else "unlogged"), steps


def rollback(spark: SparkSession, settings: Settings, run_id: str, force: bool = False) -> JobRun:
    job, steps = plan(spark, settings, run_id)
    erasures = {r.run_id for r in io.read_or_empty(spark, JOB_RUN, settings.root).where(F.col("job") == ERASE_JOB)
                .select("run_id").collect()}  # a few: one per erased person
    touched = {run_id} | {r for s in steps for r in s.later_runs}
    crossed = sorted((erasures & touched) | {r for r in touched if r.startswith(ERASE_RUN)})
    if crossed:
        raise RollbackRefused(f"rolling back run {run_id} would restore what erasure run {', '.join(crossed)} "
                              "deleted: an erased person never comes back (not even with --force)")
    blocked = [s for s in steps if s.later_runs]
    if blocked and not force:
        raise RollbackRefused("rolling back run " + run_id + " would also undo other runs: " + "; ".join(
            f"{s.table} has commits of {', '.join(s.later_runs)} after its first commit of it" for s in blocked)
            + ". Roll those back first (newest first), or pass --force to undo them with it")
    undone = sorted({run_id, *(r for s in steps for r in s.later_runs if r != "(untagged)")})
    with JobRun(spark, settings, ROLLBACK_JOB) as run:
        run.note(f"{UNDID} {','.join(undone)}")  # first (the message is cut at 4,000 characters): read by
        # JobRun.previous_inputs, so these runs no longer count as their job's last successful run
        for step in steps:
            layer, name = step.table.split(".", 1)
            ref = TableRef(layer, name, "")
            table = DeltaTable.forPath(spark, ref.path(settings.root))
            if step.target is None:
                table.delete()
                run.note(f"{step.table}: created by run {run_id}, emptied")
            else:
                table.restoreToVersion(step.target)
                run.note(f"{step.table}: restored to version {step.target} (run {run_id} wrote "
                         f"{step.first}..{step.last})")
            run.wrote(io.describe(spark, ref, settings.root))
        run.note(f"rolled back {job} run {run_id}" + (", undoing later runs too (--force)" if blocked else "")
                 + ("; its registered model version stays in MLflow" if job.startswith("train") else ""))
    return run


def recover(spark: SparkSession, settings: Settings, job: str, dead: str) -> str | None:
    """Undo a killed run's commits (its job's lock file still named it) before its job runs again; a note of
    what was restored, or None when it had committed nothing. Refused, naming them, when later runs of other
    jobs wrote the same tables since: restoring would undo them too, so that is the operator's call."""
    if _rolled_back(spark, settings, dead):
        return f"killed run {dead} was rolled back already"
    steps = _steps(spark, settings, dead)
    if not steps:
        return None
    blocked = [s for s in steps if s.later_runs]
    if blocked:
        raise RollbackRefused(f"{job} run {dead} was killed part way, and since then other runs wrote its tables ("
                              + "; ".join(f"{s.table}: {', '.join(s.later_runs)}" for s in blocked)
                              + f"): roll them back and then `lakehouse rollback --run {dead}`, or --force it")
    rollback(spark, settings, dead)
    return f"recovered from killed run {dead}: restored " + ", ".join(
        f"{s.table} to version {s.target}" if s.target is not None else f"{s.table} (emptied)" for s in steps)


def awaiting_undo(spark: SparkSession, settings: Settings, run_id: str) -> bool:
    """Whether a killed run committed to a table and has not been rolled back: its job's next run will undo it."""
    return not _rolled_back(spark, settings, run_id) and bool(_steps(spark, settings, run_id))


def _steps(spark: SparkSession, settings: Settings, run_id: str) -> list[Step]:
    """What rolling the run back restores; none when it was killed before its first commit."""
    try:
        return plan(spark, settings, run_id)[1]
    except UsageError:
        return []


def _rolled_back(spark: SparkSession, settings: Settings, run_id: str) -> bool:
    return io.exists(spark, JOB_RUN, settings.root) and not undone_runs(
        io.read(spark, JOB_RUN, settings.root)).where(F.col("run_id") == run_id).isEmpty()
