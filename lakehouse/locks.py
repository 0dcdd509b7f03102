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
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


DEAD_RUN = re.compile(r"^run ([\w-]+):")


@dataclass
class Held:
    dead: str | None  # the run a killed holder left named in the lock file
    keep_dead: bool = False  # set when the dead run could not be undone: the file names it again on release


@contextmanager
def exclusive(root: str, job: str, run_id: str = "") -> Iterator[Held]:
    """Hold `job`'s lock for the block; JobBusy at once if another run holds it. The lock file names its holder's
    run while it runs and is emptied when the run ends, failed or not: a run id found in it on entry is that of a
    run that was killed (SIGKILL, a lost machine) part way, which the block is given to undo."""
    path = lock_path(root, job)
    if path is None:
        yield Held(None)
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
        dead = DEAD_RUN.match(handle.read())
        handle.seek(0)
        handle.truncate()
        handle.write(f"run {run_id or '-'}: pid {os.getpid()} on {socket.gethostname()} since "
                     f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}\n")
        handle.flush()
        os.fsync(handle.fileno())
        held = Held(dead.group(1) if dead and dead.group(1) != "-" else None)
        try:
            yield held
        finally:
            handle.seek(0)
            handle.truncate()
            if held.keep_dead:
                handle.write(f"run {held.dead}: killed part way, not undone yet\n")
                handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)


def killed_runs(root: str, job: str) -> dict[str, str]:
    """{job: run} for each job outside `job`'s family whose lock names a run killed part way: nobody holds the
    lock, yet the file names a run (a running job's lock is held, and skipped). A per-task job is one family
    (train:<task>, score:<task>, cohort:<name>: each task writes its own tables). Reads lock files only."""
    path = lock_path(root, job)
    if path is None or not path.parent.is_dir():
        return {}
    family = job.split(":")[0]
    found = {}
    for lock in sorted(path.parent.glob("*.lock")):
        if lock.stem.split(":")[0] == family:
            continue
        with open(lock, encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its job is running now
            try:
                dead = DEAD_RUN.match(handle.read())
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        if dead and dead.group(1) != "-":
            found[lock.stem] = dead.group(1)
    return found
