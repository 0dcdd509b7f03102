"""Every job run appends one row to `ops.job_run` and prints the same as a summary."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import access, io, locks, progress
from lakehouse.catalog import JOB_RUN
from lakehouse.config import Settings
from lakehouse.errors import LakehouseError
from lakehouse.io import Written
from lakehouse.services.audit import AuditLog

SUCCEEDED, SKIPPED, FAILED = "succeeded", "skipped", "failed"
# every Delta commit a run makes carries `lakehouse-run:<run_id>` as its userMetadata, maybe followed by `; <what it
# was>` (commit_note); `lakehouse rollback` finds a run's commits by it (run_of)
USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"
RUN_TAG = "lakehouse-run:"
ERASE_JOB = "erase"  # its runs can never be rolled back: an erased person never comes back
ERASE_RUN = "erase-"  # an erasure's run ids start so: its commits are known by their tag alone (a killed one too)
ROLLBACK_JOB = "rollback"
UNDID = "undid runs"  # a rollback's note: `undid runs <id>,<id>`; those runs no longer count as a job's last


def run_of(user_metadata: str | None) -> str | None:
    """The run a commit's userMetadata names: `lakehouse-run:<run_id>`, maybe followed by `; <what it was>`, or
    (refine and link commits made before they kept the tag) `refine <run_id>; ...` and `link <run_id>`."""
    if not user_metadata:
        return None
    if user_metadata.startswith(RUN_TAG):
        return user_metadata.removeprefix(RUN_TAG).split(";")[0].strip() or None
    older = re.match(r"(?:refine|link) ([\w-]+)", user_metadata)
    return older.group(1) if older else None


@contextmanager
def commit_note(spark: SparkSession, run_id: str, detail: str | None = None) -> Iterator[None]:
    """Commits made inside carry their run's tag (JobRun's whole run), maybe followed by what they were
    (`; refine; vocab 2026.1`: the tables' history reads better); the outer tag comes back after."""
    outer = spark.conf.get(USER_METADATA, None)
    spark.conf.set(USER_METADATA, f"{RUN_TAG}{run_id}" + (f"; {detail}" if detail else ""))
    try:
        yield
    finally:
        if outer is None:
            spark.conf.unset(USER_METADATA)
        else:
            spark.conf.set(USER_METADATA, outer)


def undone_runs(runs: DataFrame) -> DataFrame:
    """`run_id` of every run a successful rollback undid (from its `undid runs a,b` note), from ops.job_run."""
    return (runs.where((F.col("job") == ROLLBACK_JOB) & (F.col("status") == SUCCEEDED))
            .select(F.explode(F.split(F.regexp_extract("message", UNDID + r" ([\w,-]+)", 1), ",")).alias("run_id")))


def git_revision(project_dir) -> str | None:
    if os.environ.get("LAKEHOUSE_GIT_REVISION"):
        return os.environ["LAKEHOUSE_GIT_REVISION"]
    try:
        done = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=project_dir,
                              capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


class KilledRunWaiting(LakehouseError):
    """Another job's killed run is not undone yet."""

    exit_code = 75  # EX_TEMPFAIL, as a busy lock: run again once that job has run

    @property
    def advice(self) -> str:
        return ("run that job again first (its next run undoes the killed run before its own work), or undo the "
                "killed run with `lakehouse rollback --run RUN_ID`; then run this job. Nothing was read or written")


@dataclass
class JobRun:
    """Context manager around one job: collects its inputs/outputs and logs the run, even on failure."""

    spark: SparkSession
    settings: Settings
    job: str
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    inputs: list[Written] = field(default_factory=list)
    outputs: list[Written] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    skipped: bool = False
    principal: access.Principal | None = None
    recovered: str | None = None  # the killed run of this job whose commits this run undid before its own work
    _tagged: object = None
    _lock: object = None

    def read(self, written: Written) -> None:
        self.inputs.append(written)

    def wrote(self, written: Written) -> Written:
        self.outputs = [w for w in self.outputs if w.table != written.table] + [written]
        return written

    def note(self, text: str) -> None:
        self.notes.append(text)

    def up_to_date(self) -> bool:
        """True when the last successful run of this job read the same inputs with the same config.

        A stage whose inputs have not changed is then skipped, so a second run-all adds no table
        version, no model version and no prediction.
        """
        previous = self.previous_inputs()
        return previous is not None and previous == {w.table: w.version for w in self.inputs}

    def previous_inputs(self) -> dict[str, int] | None:
        """Table -> version read by this job's last successful run (not one a rollback undid), if that run had
        today's configuration."""
        if not io.exists(self.spark, JOB_RUN, self.settings.root):
            return None
        runs = io.read(self.spark, JOB_RUN, self.settings.root)
        last = (runs.where(F.col("job") == self.job).where(F.col("status").isin(SUCCEEDED, SKIPPED))
                .join(undone_runs(runs), "run_id", "left_anti")
                .orderBy(F.col("ended_at").desc()).select("config_hash", "inputs").first())
        if last is None or last.config_hash != self.settings.config_hash:
            return None
        return {i.table: i.version for i in last.inputs}

    def skip(self) -> None:
        self.skipped = True
        self.note("skipped: inputs and configuration unchanged since the last successful run (--force re-runs)")

    def __enter__(self) -> JobRun:
        self.principal = access.current(self.settings)
        try:  # refused before anything is read: a job writes every layer, and one run of a job at a time
            access.require_admin(self.settings, self.principal, f"running {self.job}")
            self._lock = locks.exclusive(self.settings.root, self.job, self.run_id)
            held = self._lock.__enter__()
        except LakehouseError as err:
            self._audit(FAILED, f"refused: {err}", 403)
            raise
        try:
            self._wait_for_killed_runs()
        except LakehouseError as err:
            self._audit(FAILED, f"refused: {err}", 1)
            held.keep_dead = held.dead is not None  # its own lock goes back as it was: a killed run still named
            self._lock.__exit__(None, None, None)
            raise
        if held.dead:
            self._recover(held)
        progress.job_started(self.job)
        self._tagged = commit_note(self.spark, self.run_id)
        self._tagged.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        status = FAILED if exc is not None else SKIPPED if self.skipped else SUCCEEDED
        message = "; ".join(self.notes) if exc is None else f"{type(exc).__name__}: {exc}"
        ended = dt.datetime.now(dt.UTC)
        row = (self.job, self.run_id, self.started_at.replace(tzinfo=None), ended.replace(tzinfo=None), status,
               self.settings.config_hash, git_revision(self.settings.project_dir),
               [(w.table, w.version, w.rows) for w in self.inputs],
               [(w.table, w.version, w.rows) for w in self.outputs], message[:4000])
        try:
            io.append(self.spark, self.spark.createDataFrame([row], JOB_RUN.schema), JOB_RUN, self.settings.root)
            if exc is not None:
                exc.logged_run = f"{self.job} run {self.run_id}"  # the CLI's advice points at it
        except Exception as log_err:  # never hide the job's own error behind a logging error
            print(f"warning: could not write ops.job_run: {log_err}", file=sys.stderr)
        try:
            self._tagged.__exit__(None, None, None)
            self._audit(status, message, 0 if exc is None else 1)
        finally:  # the run is logged: its lock no longer names it, whatever happens here
            self._lock.__exit__(None, None, None)
        seconds = (ended - self.started_at).total_seconds()
        progress.job_ended(self.job, status, seconds, self.outputs)
        print(self.summary(status, seconds, message))

    def _wait_for_killed_runs(self) -> None:
        """Refused while another job's killed run waits to be undone by that job's next run: that undo refuses to
        restore a table a later run wrote (refine and link share silver; an erasure is never undone), so a run
        now could leave it stuck. A rollback goes on: it is the operator's way out. So do the other tasks of a
        per-task job (train:<task>, score:<task>, cohort:<name>): each task writes its own tables."""
        if self.job == ROLLBACK_JOB:
            return
        killed = locks.killed_runs(self.settings.root, self.job)  # lock files only: nothing more as a rule
        if not killed:
            return
        from lakehouse.rollback import awaiting_undo

        waiting = {job: run for job, run in killed.items() if awaiting_undo(self.spark, self.settings, run)}
        if waiting:
            raise KilledRunWaiting("; ".join(f"{job} run {run} was killed part way and is not undone yet"
                                             for job, run in waiting.items())
                                   + f": {self.job} would write after it, and the undo would then be refused")

    def _recover(self, held: locks.Held) -> None:
        """Undo what a killed run of this job committed (found by its tag, as `lakehouse rollback` does), so this
        run starts from the tables as they were before it: a half-done run leaves no half-written result. Not
        for an erasure (running it again finishes it: undoing it would bring a person back) nor a rollback
        (running it again, with --force, finishes it). When the undo is refused the lock keeps naming the dead
        run, and the refusal is audited."""
        from lakehouse.rollback import recover

        if self.job in (ERASE_JOB, ROLLBACK_JOB):
            self.note(f"run {held.dead} of {self.job} was killed part way; this run finishes its work")
            return
        try:
            note = recover(self.spark, self.settings, self.job, held.dead)
        except BaseException as err:
            held.keep_dead = True
            self._audit(FAILED, f"refused: {err}", 1)
            self._lock.__exit__(None, None, None)
            raise
        self.recovered = held.dead
        self.note(note or f"recovered from killed run {held.dead}: it had committed no table")

    def _audit(self, status: str, message: str, code: int) -> None:
        """The run's row of ops.audit_log (its own writer): who ran it, what it read and wrote, the outcome. A
        failed append is logged, not raised: the run itself is recorded in ops.job_run either way."""
        who = self.principal
        log = AuditLog(self.settings.root, flush_seconds=60, writer_kind="job")
        appended = log.write(actor=who.name, role=who.role, hospital_id=who.hospital_id, action="job",
                             target=f"{self.job} run {self.run_id}",
                             tables=[w.table for w in self.inputs + self.outputs],
                             versions={w.table: w.version for w in self.inputs + self.outputs},
                             rows=sum(w.rows or 0 for w in self.outputs), purpose=f"job {self.job}",
                             outcome=f"{status}: {message}"[:1000], status=code,
                             duration_ms=(dt.datetime.now(dt.UTC) - self.started_at).total_seconds() * 1000)
        if not appended:
            print(f"warning: the {self.job} run {self.run_id} could not be recorded in ops.audit_log", file=sys.stderr)

    def summary(self, status: str, seconds: float, message: str) -> str:
        lines = [f"== {self.job} {status} in {seconds:.1f}s (run {self.run_id})"]
        for title, items in (("read", self.inputs), ("kept" if self.skipped else "wrote", self.outputs)):
            for w in items:
                lines.append(f"   {title:<5} {w.table:<36} rows={w.rows:<10} version={w.version}")
        if message:
            lines.append(f"   {message}")
        return "\n".join(lines)
