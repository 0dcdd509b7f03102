"""Progress of long-running commands: a live status line on a terminal, JSON lines when not on one.

The stages report what they do (`step`: a stage, items done of a total, rows); where that goes is the
CLI's choice, made once (`configure`). A library caller (a test, a notebook) hears nothing unless it
configures a reporter itself: progress is for operators, the return values are for programs.

Events on a pipe or a log file are one JSON object per line, on stderr, so that stdout keeps the
human summary table and a log shipper gets fields it can index:

    {"event": "step", "job": "ingest", "stage": "parse", "item": "lab_result", "done": 3, "total": 9,
     "unit": "entities", "rows": 120345, "elapsed_s": 12.4, "at": "2026-11-29T22:40:01Z"}
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class Reporter:
    """Hears nothing: the default outside the CLI."""

    every: float | None = None  # seconds between looks at Spark's running tasks (None: no looks)

    def event(self, event: str, **fields) -> None:
        pass

    def close(self) -> None:
        pass


class JsonLines(Reporter):
    """One JSON object per event, flushed at once (a pipe or a log file)."""

    every = 10.0  # a log line per 10 s of a long Spark stage is enough

    def __init__(self, stream: TextIO):
        self.stream = stream

    def event(self, event: str, **fields) -> None:
        at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.stream.write(json.dumps({"event": event, **fields, "at": at}, default=str) + "\n")
        self.stream.flush()


class LiveLine(Reporter):
    """One status line rewritten in place; a job's end leaves its line behind."""

    every = 1.0

    def __init__(self, stream: TextIO, width: int = 119):
        self.stream, self.width, self.shown = stream, width, False

    def event(self, event: str, **fields) -> None:
        text = render(event, fields)
        if text is None:
            return
        self.stream.write("\r\033[K" + text[:self.width])
        self.shown = event != "end"
        if not self.shown:
            self.stream.write("\n")
        self.stream.flush()

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False


def render(event: str, fields: dict) -> str | None:
    """The terminal's words for an event."""
    job = f"[{fields.get('job', '?')}]"
    if event == "start":
        return f"{job} started"
    if event == "end":
        return f"{job} {fields.get('status')} in {fields.get('seconds', 0):.1f}s"
    if event == "wrote":
        return f"{job} wrote {fields.get('table')} (rows {fields.get('rows', 0):,}, version {fields.get('version')})"
    if event == "spark":
        return f"{job} spark stage {fields.get('stages')} · {fields.get('done', 0)}/{fields.get('total')} partitions"
    if event == "step":
        parts = [f"{job} {fields.get('stage', '')}"]
        if fields.get("item"):
            parts.append(str(fields["item"]))
        if fields.get("total"):
            parts.append(f"{fields.get('done', 0)}/{fields['total']} {fields.get('unit', '')}".rstrip())
        if fields.get("rows") is not None:
            parts.append(f"rows {fields['rows']:,}")
        return " · ".join(parts)
    return None


_reporter: Reporter = Reporter()
_job: list[tuple[str, float]] = []  # the job being run (name, start), innermost last
_lock = threading.Lock()  # the Spark watcher reports from its own thread
_watch: SparkWatch | None = None


def _emit(event: str, **fields) -> None:
    with _lock:
        _reporter.event(event, **fields)


class SparkWatch:
    """Between a job's own steps, how far Spark is: the partitions done of the stages running now.

    It looks every `every` seconds from a daemon thread and reports only when something moved, so a
    stage that runs for minutes shows its tasks completing instead of a silent line."""

    def __init__(self, spark, every: float):
        self.tracker, self.every = spark.sparkContext.statusTracker(), every
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="lakehouse-spark-watch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        last = None
        while not self.stopped.wait(self.every):
            job = _current()
            try:
                stages = [i for i in (self.tracker.getStageInfo(s) for s in self.tracker.getActiveStageIds()) if i]
            except Exception:  # the session is stopping: nothing more to watch
                return
            seen = (tuple(sorted(i.stageId for i in stages)), sum(i.numCompletedTasks for i in stages))
            if not stages or seen == last:
                continue
            with _lock:
                if _current() != job:  # the job ended while Spark was asked: its `end` stays its last event
                    continue
                last = seen
                _reporter.event("spark", job=job, stages=",".join(map(str, seen[0])), done=seen[1],
                                total=sum(i.numTasks for i in stages), unit="partitions")

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)


def configure(stream: TextIO | None = None, structured: bool | None = None) -> Reporter:
    """Report to `stream` (default stderr): live on a terminal, JSON lines otherwise or if `structured`."""
    global _reporter
    stream = stream or sys.stderr
    if structured is None:
        structured = not (hasattr(stream, "isatty") and stream.isatty())
    _reporter = JsonLines(stream) if structured else LiveLine(stream)
    return _reporter


def watch_spark(spark) -> None:
    """Report the running Spark stages' partitions while the configured reporter listens (the CLI calls this)."""
    global _watch
    if _watch is None and _reporter.every is not None:
        _watch = SparkWatch(spark, _reporter.every)


def reset() -> None:
    global _reporter, _watch
    if _watch is not None:
        _watch.stop()
        _watch = None
    _reporter.close()
    _reporter = Reporter()
    _job.clear()  # a job interrupted between its start and end leaves no name behind


class Outcome:
    """What a command ended with: a check that found problems (pii-scan, reconcile) exits non-zero."""

    exit_code: int | None = None


@contextmanager
def command(name: str) -> Iterator[Outcome]:
    """Start and end events for a command that is not a logged job (generate, pii-scan, reconcile, ...);
    it ended `succeeded` only if it set the outcome's exit code to 0."""
    job_started(name)
    started, outcome = time.monotonic(), Outcome()
    try:
        yield outcome
    finally:
        job_ended(name, "succeeded" if outcome.exit_code == 0 else "failed", time.monotonic() - started, [])


def job_started(job: str) -> None:
    with _lock:
        _job.append((job, time.monotonic()))
        _reporter.event("start", job=job)


def job_ended(job: str, status: str, seconds: float, outputs: list) -> None:
    with _lock:  # with the watcher's check, nothing of this job is reported after its end
        if _job and _job[-1][0] == job:
            _job.pop()
        _reporter.event("end", job=job, status=status, seconds=round(seconds, 1),
                        outputs=[{"table": w.table, "version": w.version, "rows": w.rows} for w in outputs])


def wrote(table: str, version: int | None, rows: int) -> None:
    _emit("wrote", job=_current(), table=table, version=version, rows=rows)


def step(stage: str, item: str | None = None, done: int | None = None, total: int | None = None,
         unit: str | None = None, rows: int | None = None) -> None:
    """Where the running job is: `stage`, on `item`, `done` of `total` `unit`s, `rows` so far."""
    fields = {"job": _current(), "stage": stage, "item": item, "done": done, "total": total, "unit": unit,
              "rows": rows, "elapsed_s": round(time.monotonic() - _job[-1][1], 1) if _job else None}
    _emit("step", **{k: v for k, v in fields.items() if v is not None})


def _current() -> str:
    return _job[-1][0] if _job else "lakehouse"
