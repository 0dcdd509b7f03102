"""One run of a job at a time per lakehouse root: an exclusive lock held for the run.

Two runs of one job would each read the same inputs and append the same rows (Delta's blind appends do not
conflict), so the second is refused at once with who holds the lock. The lock is an OS file lock (flock) on
`<root>/_locks/<job>.lock`: released by the kernel when its holder exits or is killed, so a crashed run never
leaves it behind. A root that is not a local folder (an object store) cannot hold one: there, jobs rely on Delta's
own conflict checks and the operator's scheduler.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from lakehouse.errors import LakehouseError

LOCK_DIR = "_locks"


class JobBusy(LakehouseError):
    """Another run of the same job holds its lock."""

    exit_code = 75  # EX_TEMPFAIL: try again later

    @property
    def advice(self) -> str:
        return "wait for that run to finish (or stop it), then run the job again; nothing was read or written"


def lock_path(root: str, job: str) -> Path | None:
    parsed = urlparse(root)
    if parsed.scheme not in ("", "file"):
        return None
    return Path(parsed.path if parsed.scheme else root) / LOCK_DIR / f"{job}.lock"


@contextmanager
def exclusive(root: str, job: str) -> Iterator[None]:
    """Hold `job`'s lock for the block; JobBusy at once if another run holds it."""
    path = lock_path(root, job)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = handle.read().strip() or "another process"
            raise JobBusy(f"{job} is already running under this root ({holder}; lock {path}): two runs of one job "
                          "at once would append the same rows twice") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
