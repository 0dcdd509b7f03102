"""Fault injection for the kill tests and `make chaos`: inert unless $LAKEHOUSE_CHAOS_READY names a file.

Then every Delta commit a job makes of its outputs through `lakehouse.io` (and every model registry change `train`
makes, as `registry:<model>`) appends `<n> <table>` to that file (so a test knows a partial commit exists before it
kills the job), and with $LAKEHOUSE_CHAOS_HOLD_AFTER=N the job stops after its N-th commit and waits there, between
two commits, until it is killed. The run log's and the audit log's commits are not counted: every run writes them,
and a run recovering a killed one logs its rollback before its own first commit.
"""

from __future__ import annotations

import os
import time

from lakehouse.catalog import AUDIT_LOG, JOB_RUN

READY_ENV, HOLD_ENV = "LAKEHOUSE_CHAOS_READY", "LAKEHOUSE_CHAOS_HOLD_AFTER"
LOGS = frozenset({JOB_RUN.qualified, AUDIT_LOG.qualified})
_commits = 0


def committed(table: str) -> None:
    global _commits
    ready = os.environ.get(READY_ENV)
    if not ready or table in LOGS:
        return
    _commits += 1
    with open(ready, "a", encoding="utf-8") as out:
        out.write(f"{_commits} {table}\n")
    if os.environ.get(HOLD_ENV) == str(_commits):
        while True:  # held between two commits until the test kills the process group
            time.sleep(60)
