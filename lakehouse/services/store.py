"""Gold tables read with deltalake (delta-rs): a lookup needs no JVM and no Spark job.

Each table is opened once and brought up to date when it was last checked more than `refresh_seconds` ago, so
a new build shows without a restart and a burst of requests replays no log.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as ds
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from lakehouse.catalog import TableRef


class TableMissing(Exception):
    """The table has not been built under this root."""


@dataclass
class _Open:
    table: DeltaTable
    dataset: ds.Dataset
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
            if current is None:
                try:
                    table = DeltaTable(ref.path(self.root))
                except TableNotFoundError as err:
                    raise TableMissing(f"{ref.qualified} has not been built") from err
                current = self._open[ref.qualified] = _Open(table, table.to_pyarrow_dataset(), table.version(), now)
            elif now - current.checked >= self.refresh_seconds:
                current.table.update_incremental()
                if current.table.version() != current.version:
                    current.dataset, current.version = current.table.to_pyarrow_dataset(), current.table.version()
                current.checked = now
            return current

    def version(self, ref: TableRef) -> int:
        return self._get(ref).version

    def read(self, ref: TableRef, where: ds.Expression | None = None, columns: list[str] | None = None
             ) -> tuple[pa.Table, int]:
        """The rows matching `where` (file statistics skip the files that cannot match), and the version read."""
        current = self._get(ref)
        return current.dataset.to_table(filter=where, columns=columns), current.version

    def exists(self, ref: TableRef) -> bool:
        try:
            self._get(ref)
        except TableMissing:
            return False
        return True
