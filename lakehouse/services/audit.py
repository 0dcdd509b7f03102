"""The data services' audit trail: every request becomes a row of ops.audit_log.

Rows are queued and appended with deltalake every `flush_seconds` (one commit per batch, not per request) and
at shutdown; a failed append keeps them for the next, and rows the last append could not write go to the server
log (an append that fails after its commit landed would write its rows twice: `(writer, seq)` tells them
apart). Each writer (one server process) numbers its rows and chains them by hash, so an edited or deleted row
breaks its writer's chain while concurrent writers never fork one. The hash is not keyed: rewriting a whole
chain, or cutting rows off its end, needs a keyed hash or a signed checkpoint to be caught.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from deltalake import write_deltalake

from lakehouse.catalog import AUDIT_LOG, TableRef

log = logging.getLogger(__name__)

_ARROW = {"TIMESTAMP": pa.timestamp("us", tz="UTC"), "STRING": pa.string(), "BIGINT": pa.int64(),
          "INT": pa.int32(), "DOUBLE": pa.float64(), "ARRAY<STRING>": pa.list_(pa.string()),
          "MAP<STRING, BIGINT>": pa.map_(pa.string(), pa.int64())}


def arrow_schema(ref: TableRef) -> pa.Schema:
    """The catalog's schema as Arrow (the types the audit log uses)."""
    return pa.schema([pa.field(name, _ARROW[kind]) for name, kind in ref.fields])


# columns added after the first release: left out of a row's hash while empty, so older rows still verify
LATER_COLUMNS = frozenset({"columns"})


def entry_hash(prev_hash: str, entry: dict[str, Any]) -> str:
    """sha256 of the previous hash and the row's canonical JSON (every column but the hash itself)."""
    body = {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in entry.items()
            if k != "hash" and not (k in LATER_COLUMNS and v is None)}
    return hashlib.sha256((prev_hash + json.dumps(body, sort_keys=True, default=str)).encode()).hexdigest()


class AuditLog:
    def __init__(self, root: str, flush_seconds: float, writer_kind: str = "api"):
        self.path = AUDIT_LOG.path(root)
        self.schema = arrow_schema(AUDIT_LOG)
        self.writer = f"{writer_kind}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._seq, self._prev = 0, ""
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._flush_seconds = flush_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-flush", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def record(self, **columns: Any) -> None:
        """Queue one row: actor, role, hospital_id, action, target, tables, versions, columns, rows, purpose,
        outcome, status, duration_ms (the writer, sequence, time and hashes are added here)."""
        with self._lock:
            self._seq += 1
            entry = {name: None for name in self.schema.names}
            entry.update(columns, at=dt.datetime.now(dt.UTC), writer=self.writer, seq=self._seq,
                         prev_hash=self._prev)
            if entry["duration_ms"] is not None:  # hashed as it is stored: 12 is written 12.0
                entry["duration_ms"] = float(entry["duration_ms"])
            entry["versions"] = sorted((entry["versions"] or {}).items())
            entry["hash"] = self._prev = entry_hash(self._prev, entry)
            self._pending.append(entry)

    def write(self, **columns: Any) -> bool:
        """Record one row and append it now (a job, a read, an export); False when the append failed (the row
        stays pending, and goes to the log at close)."""
        self.record(**columns)
        self.flush()
        return not self.pending

    @property
    def pending(self) -> list[dict[str, Any]]:
        """Rows queued and not appended yet."""
        with self._lock:
            return list(self._pending)

    def flush(self) -> int:
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return 0
        try:
            write_deltalake(self.path, pa.Table.from_pylist(batch, schema=self.schema), mode="append",
                            schema_mode="merge")  # a log written before a column was added gains it
        except Exception:  # keep the rows for the next flush: an audit row is never dropped
            log.exception("appending %d rows to ops.audit_log failed; retrying at the next flush", len(batch))
            with self._lock:
                self._pending[:0] = batch
            return 0
        return len(batch)

    def _run(self) -> None:
        while not self._stop.wait(self._flush_seconds):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.flush()
        if self._pending:  # the last append failed: the rows go to the server log rather than nowhere
            for entry in self._pending:
                log.error("audit row not appended to ops.audit_log: %s", json.dumps(entry, default=str))


# --- verification ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Break:
    """The first entry of a writer's chain that does not hold."""

    writer: str
    seq: int
    at: dt.datetime | None
    reason: str

    def __str__(self) -> str:
        when = f" (at {self.at.isoformat()})" if self.at else ""
        return f"writer {self.writer}, entry {self.seq}{when}: {self.reason}"


@dataclass(frozen=True)
class Verdict:
    entries: int
    writers: int
    breaks: list[Break]  # at most one per writer, earliest first

    @property
    def ok(self) -> bool:
        return not self.breaks


def verify(root: str) -> Verdict:
    """Recompute every writer's chain of ops.audit_log: its entries numbered 1, 2, ... with no gap, each one's
    prev_hash the hash of the one before, each hash that of its own content. An edited entry fails its hash, a
    deleted one leaves a gap (or, at a chain's start, a first entry that is not 1); an entry written twice by a
    retried append (the same content) is not a break. delta-rs's engine sorts the log; this process then holds
    one batch of it at a time and one row per writer."""
    from deltalake import DeltaTable, QueryBuilder

    reader = QueryBuilder().register("log", DeltaTable(AUDIT_LOG.path(root))).execute(
        "SELECT * FROM log ORDER BY writer, seq")
    breaks: list[Break] = []
    entries, writers = 0, 0
    writer, prev, broken = None, None, False
    for batch in reader:
        for row in pa.record_batch(batch).to_pylist():
            entries += 1
            if row["writer"] != writer:
                writer, prev, broken = row["writer"], None, False
                writers += 1
            if broken:
                continue
            problem = _problem(row, prev)
            if problem == "repeat":
                continue
            if problem:
                breaks.append(Break(writer, row["seq"], row["at"], problem))
                broken = True
            prev = row
    return Verdict(entries, writers, sorted(breaks, key=lambda b: (b.at is None, b.at or dt.datetime.min, b.writer)))


def _problem(row: dict[str, Any], prev: dict[str, Any] | None) -> str | None:
    expected_seq = 1 if prev is None else prev["seq"] + 1
    if prev is not None and row["seq"] == prev["seq"]:
        return "repeat" if row == prev else "two different entries have this number (one was edited or forged)"
    if row["seq"] != expected_seq:
        missing = (f"entries {expected_seq}..{row['seq'] - 1} are" if row["seq"] - expected_seq > 1
                   else f"entry {expected_seq} is")
        return f"{missing} missing (deleted), or the chain was cut"
    expected_prev = "" if prev is None else prev["hash"]
    if row["prev_hash"] != expected_prev:
        return "its prev_hash is not the hash of the entry before it (that entry was edited and re-hashed, or replaced)"
    entry = {**row, "versions": sorted(row["versions"] or [])}
    if entry_hash(row["prev_hash"], entry) != row["hash"]:
        return "its content does not match its hash (edited)"
    return None
