"""`lakehouse audit-verify`: every writer's hash chain of ops.audit_log is recomputed; an edited, deleted or
replaced entry is named, and the command exits 1. The log is written by the audit writer the data services use
(deltalake, no JVM) and tampered with through Delta's own UPDATE and DELETE."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import CONF
from deltalake import DeltaTable, write_deltalake

from lakehouse.catalog import AUDIT_LOG
from lakehouse.services import audit
from lakehouse.services.store import run


def _rows(root: str, where: str):
    return run(f"SELECT * FROM log WHERE {where}", log=DeltaTable(AUDIT_LOG.path(root)))


def _log(root: str, writers: int = 2, entries: int = 4) -> list[audit.AuditLog]:
    logs = [audit.AuditLog(root, flush_seconds=60) for _ in range(writers)]
    for n in range(entries):
        for number, log in enumerate(logs):
            log.record(actor=f"user{number}", role="researcher", action="read", target=f"GET /x/{n}",
                       tables=["gold.patient_summary"], versions={"gold.patient_summary": n}, rows=n, status=200,
                       outcome="ok", purpose="audit test", duration_ms=1.5)
        for log in logs:
            log.flush()  # one append per writer per round: the chains interleave in the table
    return logs


def _verify(root: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lakehouse.cli", "audit-verify", "--conf-dir", str(CONF),
                           "--root", root], capture_output=True, text=True, timeout=120)


@pytest.fixture
def root(tmp_path) -> str:
    return str(tmp_path / "root")


def test_intact_chains_verify(root):
    logs = _log(root)
    # a retried append whose first try had landed writes the same row again: not a break
    again = _rows(root, f"writer = '{logs[0].writer}' AND seq = 3")
    write_deltalake(AUDIT_LOG.path(root), again.cast(audit.arrow_schema(AUDIT_LOG)), mode="append")
    verdict = audit.verify(root)
    assert (verdict.ok, verdict.entries, verdict.writers) == (True, 9, 2)
    out = _verify(root)
    assert out.returncode == 0 and "9 entries in 2 chains, every chain intact" in out.stdout


def test_an_edited_entry_is_named(root):
    logs = _log(root)
    DeltaTable(AUDIT_LOG.path(root)).update(updates={"actor": "'someone else'"},
                                            predicate=f"writer = '{logs[1].writer}' AND seq = 3")
    verdict = audit.verify(root)
    assert [(b.writer, b.seq) for b in verdict.breaks] == [(logs[1].writer, 3)]
    assert "edited" in verdict.breaks[0].reason
    out = _verify(root)
    assert out.returncode == 1
    assert f"the first broken entry is\n  writer {logs[1].writer}, entry 3 " in out.stderr


def test_a_deleted_entry_and_a_replaced_one_are_named(root):
    logs = _log(root)
    table = DeltaTable(AUDIT_LOG.path(root))
    table.delete(f"writer = '{logs[0].writer}' AND seq = 2")
    # an entry edited and re-hashed: its own hash holds, the next entry's prev_hash does not
    row = _rows(root, f"writer = '{logs[1].writer}' AND seq = 1").to_pylist()[0]
    row["actor"] = "someone else"
    forged = audit.entry_hash(row["prev_hash"], {**row, "versions": sorted(row["versions"])})
    table.update(updates={"actor": "'someone else'", "hash": f"'{forged}'"},
                 predicate=f"writer = '{logs[1].writer}' AND seq = 1")
    verdict = audit.verify(root)
    reasons = {b.writer: (b.seq, b.reason) for b in verdict.breaks}
    assert reasons[logs[0].writer] == (3, "entry 2 is missing (deleted), or the chain was cut")
    assert reasons[logs[1].writer][0] == 2 and "prev_hash" in reasons[logs[1].writer][1]
    assert _verify(root).returncode == 1


def test_an_empty_root_has_nothing_to_verify(root):
    out = _verify(root)
    assert out.returncode == 0 and "nothing has been audited" in out.stdout
