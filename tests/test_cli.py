"""The CLI's manners, without Spark: progress on a terminal and off it, errors that say what to do."""

from __future__ import annotations

import io
import json

from conftest import CONF

from lakehouse import cli, progress
from lakehouse.io import Written


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _job(stream) -> None:
    progress.job_started("ingest")
    progress.step("parse", "lab_result", 3, 9, "files", 120345)
    progress.wrote("bronze.lab_result", 4, 120000)
    progress.job_ended("ingest", "succeeded", 12.34, [Written("bronze.lab_result", 4, 120000)])
    progress.reset()


def test_progress_is_one_line_rewritten_on_a_terminal():
    terminal = Terminal()
    progress.configure(terminal)
    _job(terminal)
    frames = terminal.getvalue().split("\r\033[K")
    assert frames == ["", "[ingest] started", "[ingest] parse · lab_result · 3/9 files · rows 120,345",
                      "[ingest] wrote bronze.lab_result (rows 120,000, version 4)", "[ingest] succeeded in 12.3s\n"]


def test_progress_is_json_lines_off_a_terminal():
    log = io.StringIO()
    progress.configure(log)
    _job(log)
    events = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["start", "step", "wrote", "end"]
    step = {k: v for k, v in events[1].items() if k not in ("at", "elapsed_s")}
    assert step == {"event": "step", "job": "ingest", "stage": "parse", "item": "lab_result", "done": 3, "total": 9,
                    "unit": "files", "rows": 120345}
    assert events[3]["outputs"] == [{"table": "bronze.lab_result", "version": 4, "rows": 120000}]
    assert all(e["at"].endswith("Z") for e in events)


def test_nothing_is_reported_unless_a_reporter_is_configured(capsys):
    _job(None)
    assert capsys.readouterr() == ("", "")


def test_an_unexpected_failure_reads_as_advice_not_a_traceback(monkeypatch, capsys):
    def broken(args, settings):
        raise RuntimeError("[DELTA_CONCURRENT_APPEND] a concurrent writer added files\n\tat org.apache...")

    monkeypatch.setitem(cli.COMMANDS, "build", broken)
    assert cli.main(["build", "--conf-dir", str(CONF)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: build failed: RuntimeError: [DELTA_CONCURRENT_APPEND] a concurrent writer added files"
    assert err[1].startswith("  what to do: the run is logged as failed in ops.job_run (see `lakehouse status`)")
    assert "LAKEHOUSE_DEBUG=1" in err[1]
