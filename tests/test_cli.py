"""The CLI's manners: progress on a terminal and off it, errors that say what to do."""

from __future__ import annotations

import io
import json

from conftest import CONF

from lakehouse import cli, progress
from lakehouse import io as io_
from lakehouse.catalog import JOB_RUN
from lakehouse.io import Written
from lakehouse.runlog import JobRun


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _job() -> None:
    progress.job_started("ingest")
    progress.step("parse", "lab_result", 3, 9, "files", 120345)
    progress.wrote("bronze.lab_result", 4, 120000)
    progress.job_ended("ingest", "succeeded", 12.34, [Written("bronze.lab_result", 4, 120000)])
    progress.reset()


def test_progress_is_one_line_rewritten_on_a_terminal():
    terminal = Terminal()
    progress.configure(terminal)
    _job()
    frames = terminal.getvalue().split("\r\033[K")
    assert frames == ["", "[ingest] started", "[ingest] parse · lab_result · 3/9 files · rows 120,345",
                      "[ingest] wrote bronze.lab_result (rows 120,000, version 4)", "[ingest] succeeded in 12.3s\n"]


def test_progress_is_json_lines_off_a_terminal():
    log = io.StringIO()
    progress.configure(log)
    _job()
    events = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["start", "step", "wrote", "end"]
    step = {k: v for k, v in events[1].items() if k not in ("at", "elapsed_s")}
    assert step == {"event": "step", "job": "ingest", "stage": "parse", "item": "lab_result", "done": 3, "total": 9,
                    "unit": "files", "rows": 120345}
    assert events[3]["outputs"] == [{"table": "bronze.lab_result", "version": 4, "rows": 120000}]
    assert all(e["at"].endswith("Z") for e in events)


def test_nothing_is_reported_unless_a_reporter_is_configured(capsys):
    _job()
    assert capsys.readouterr() == ("", "")


def test_an_unexpected_failure_reads_as_advice_not_a_traceback(monkeypatch, capsys):
    def broken(args, settings):
        raise RuntimeError("[DELTA_CONCURRENT_APPEND] a concurrent writer added files\n\tat org.apache...")

    monkeypatch.setitem(cli.COMMANDS, "build", broken)
    assert cli.main(["build", "--conf-dir", str(CONF)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: build failed: RuntimeError: [DELTA_CONCURRENT_APPEND] a concurrent writer added files"
    assert err[1].startswith("  what to do: it failed before any job run was logged; nothing it wrote is half-")
    assert "LAKEHOUSE_DEBUG=1" in err[1]


def test_a_failure_inside_a_job_run_points_at_its_logged_run(spark, tmp_path, monkeypatch, capsys):
    def broken(args, settings):
        with JobRun(spark, settings, "build"):
            raise RuntimeError("the executor was lost")

    monkeypatch.setitem(cli.COMMANDS, "build", broken)
    assert cli.main(["build", "--conf-dir", str(CONF), "--root", str(tmp_path / "root")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-3] == "error: build failed: RuntimeError: the executor was lost"
    logged = io_.read(spark, JOB_RUN, str(tmp_path / "root")).select("run_id", "status").collect()
    assert [r.status for r in logged] == ["failed"]
    assert err[-2].startswith(f"  what to do: build run {logged[0].run_id} is logged as failed in ops.job_run")


def test_generate_reports_each_block_as_a_json_line(tmp_path, capsys):
    out = tmp_path / "region"
    assert cli.main(["generate", "--conf-dir", str(CONF), "--out", str(out), "--hospitals", "2", "--patients", "30",
                     "--block-size", "10", "--workers", "2"]) == 0
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.err.splitlines() if line.startswith("{")]
    steps = [(e["job"], e["stage"], e["item"], e["done"], e["total"], e["unit"]) for e in events[1:-1]]
    assert steps == [("generate", "generate", f"block {b}", b + 1, 3, "blocks") for b in range(3)]
    assert [e["rows"] for e in events[1:-1]] == sorted({e["rows"] for e in events[1:-1]})  # grows block by block
    rows = dict(part.split("=") for part in captured.out.splitlines()[1].split(";")[0][len("rows: "):].split(", "))
    assert events[-2]["rows"] == sum(int(n) for n in rows.values())  # the last block's total is the printed sum
    assert (events[0]["event"], events[-1]["event"], events[-1]["status"]) == ("start", "end", "succeeded")
    assert all(e["event"] == "step" for e in events[1:-1])


def test_a_long_spark_stage_reports_its_partitions_as_they_finish(spark):
    log = io.StringIO()
    progress.configure(log).every = 0.2  # a look every 0.2 s instead of a log line's 10 s
    try:
        progress.watch_spark(spark)
        with progress.command("pii-scan"):
            spark.sparkContext.parallelize(range(4), 4).foreach(lambda _: __import__("time").sleep(1.5))
    finally:
        progress.reset()
    events = [json.loads(line) for line in log.getvalue().splitlines()]
    print(log.getvalue())  # shown by pytest when an assertion below fails
    seen = [(e["done"], e["total"], e["unit"], e["job"]) for e in events if e["event"] == "spark"]
    assert seen and all(total == 4 and unit == "partitions" and job == "pii-scan" for _, total, unit, job in seen)
    assert all(a < b for (a, *_), (b, *_) in zip(seen, seen[1:], strict=False))  # forward, each change once
    assert (events[0]["event"], events[-1]["event"]) == ("start", "end")
    first = next(e for e in events if e["event"] == "spark")  # and on a terminal:
    assert progress.render("spark", first) == f"[pii-scan] spark stage {first['stages']} · {first['done']}/4 partitions"
