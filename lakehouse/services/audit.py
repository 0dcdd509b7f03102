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


def entry_hash(prev_hash: str, entry: dict[str, Any]) -> str:
    """sha256 of the previous hash and the row's canonical JSON (every column but the hash itself)."""
    body = {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in entry.items() if k != "hash"}
    return hashlib.sha256((prev_hash + json.dumps(body, sort_keys=True, default=str)).encode()).hexdigest()


class AuditLog:
    def __init__(self, root: str, flush_seconds: float):
        self.path = AUDIT_LOG.path(root)
        self.schema = arrow_schema(AUDIT_LOG)
        self.writer = f"api@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._seq, self._prev = 0, ""
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._flush_seconds = flush_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-flush", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def record(self, **columns: Any) -> None:
        """Queue one row: actor, role, hospital_id, action, target, tables, versions, rows, purpose, outcome,
        status, duration_ms (the writer, sequence, time and hashes are added here)."""
        with self._lock:
            self._seq += 1
            entry = {name: None for name in self.schema.names}
            entry.update(columns, at=dt.datetime.now(dt.UTC), writer=self.writer, seq=self._seq,
                         prev_hash=self._prev)
            entry["versions"] = sorted((entry["versions"] or {}).items())
            entry["hash"] = self._prev = entry_hash(self._prev, entry)
            self._pending.append(entry)

    def flush(self) -> int:
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return 0
        try:
            write_deltalake(self.path, pa.Table.from_pylist(batch, schema=self.schema), mode="append")
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
