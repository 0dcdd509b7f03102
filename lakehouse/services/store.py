"""Gold tables read with deltalake (delta-rs): a lookup needs no JVM and no Spark job.

Queries run in delta-rs's own engine (DataFusion through `QueryBuilder`): it prunes files by their Delta
statistics and pages by the Parquet page index, and it honours every table feature delta-rs reads. (pyarrow's
dataset over delta-rs's file-system handler was the other way; it leaves pyarrow I/O threads that abort the
process at exit.) Each table is opened once and opened anew when it was opened more than `refresh_seconds` ago,
so a new build shows without a restart and a burst of requests replays no log.

`where` is SQL: callers build it only from validated values (hex keys, names matching a pattern, timestamps).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pyarrow as pa
from deltalake import DeltaTable, QueryBuilder
from deltalake.exceptions import TableNotFoundError

from lakehouse.catalog import TableRef


class TableMissing(Exception):
    """The table has not been built under this root."""


@dataclass(frozen=True)
class _Open:
    """One snapshot of a table: never changed, replaced when the table has a new version."""

    table: DeltaTable
    version: int
    checked: float


class DeltaStore:
    def __init__(self, root: str, refresh_seconds: float):
        self.root = root
        self.refresh_seconds = refresh_seconds
        self._open: dict[str, _Open] = {}
        self._lock = threading.Lock()

    def _get(self, ref: TableRef) -> _Open:
        now = time.monotonic()
        with self._lock:
            current = self._open.get(ref.qualified)
            if current is None or now - current.checked >= self.refresh_seconds:
                try:
                    table = DeltaTable(ref.path(self.root))
                except TableNotFoundError as err:
                    raise TableMissing(f"{ref.qualified} has not been built") from err
                current = self._open[ref.qualified] = _Open(table, table.version(), now)
            return current

    def version(self, ref: TableRef) -> int | None:
        """The version served, or None when the table has not been built."""
        try:
            return self._get(ref).version
        except TableMissing:
            return None

    def query(self, tables: dict[str, TableRef], sql: str) -> tuple[pa.Table, dict[str, int]]:
        """`sql` over the tables under the names given, and the version each was read at."""
        opened = {name: self._get(ref) for name, ref in tables.items()}
        return (run(sql, **{name: o.table for name, o in opened.items()}),
                {tables[name].qualified: o.version for name, o in opened.items()})

    def read(self, ref: TableRef, where: str | None = None, columns: list[str] | None = None
             ) -> tuple[pa.Table, int]:
        """The rows matching the SQL condition `where`, and the version they were read at."""
        rows, versions = self.query({"t": ref}, select("t", where, columns))
        return rows, versions[ref.qualified]

    def exists(self, ref: TableRef) -> bool:
        return self.version(ref) is not None


def select(table: str, where: str | None = None, columns: list[str] | None = None) -> str:
    names = ", ".join(f'"{c}"' for c in columns) if columns else "*"
    return f"SELECT {names} FROM {table}" + (f" WHERE {where}" if where else "")


def run(query: str, **tables: DeltaTable) -> pa.Table:
    """`query` over the tables under their keyword names, in delta-rs's engine, with plain Arrow types."""
    builder = QueryBuilder()
    for name, table in tables.items():
        builder = builder.register(name, table)
    rows = pa.table(builder.execute(query).read_all())
    return rows.cast(pa.schema([field.with_type(_plain(field.type)) for field in rows.schema]))


def _plain(kind: pa.DataType) -> pa.DataType:
    """DataFusion answers with view types (string_view); most of pyarrow's kernels want plain ones."""
    if kind == pa.string_view():
        return pa.string()
    if kind == pa.binary_view():
        return pa.binary()
    if pa.types.is_map(kind):
        return pa.map_(_plain(kind.key_type), kind.item_field.with_type(_plain(kind.item_type)))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_list_view(kind):
        return pa.list_(kind.value_field.with_type(_plain(kind.value_type)))
    if pa.types.is_struct(kind):
        return pa.struct([field.with_type(_plain(field.type)) for field in kind])
    return kind
