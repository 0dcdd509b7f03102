"""Servers run detached: a PID file, a log file and a ready file under `<run_dir>/<name>/`.

`start` launches the server's own foreground command in a new session (so a stop reaches its whole process
group, JVM included), waits until it says it is ready, and fails with the log's tail if it dies first.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lakehouse.config import Settings
from lakehouse.errors import LakehouseError, UsageError


class ServiceFailed(LakehouseError):
    """A server did not come up."""

    def __init__(self, message: str, log_file: Path):
        super().__init__(message)
        self.log_file = log_file

    @property
    def advice(self) -> str:
        return f"read {self.log_file} for the server's own messages"


@dataclass(frozen=True)
class Daemon:
    name: str
    run_dir: Path

    @classmethod
    def of(cls, settings: Settings, name: str) -> Daemon:
        """The server `name` of this configuration (its files under services.run_dir)."""
        return cls(name, Path(settings.path(settings.main.services.run_dir)))

    @property
    def folder(self) -> Path:
        return self.run_dir / self.name

    @property
    def pid_file(self) -> Path:
        return self.folder / "server.pid"

    @property
    def log_file(self) -> Path:
        return self.folder / "server.log"

    @property
    def ready_file(self) -> Path:
        """Written by the server (JSON: its endpoints) once it accepts connections."""
        return self.folder / "ready.json"

    def pid(self) -> int | None:
        """The running server's PID, or None (a stale PID file, or one whose PID now belongs to a process that
        is not a lakehouse server, is removed)."""
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
            command = Path(f"/proc/{pid}/cmdline").read_bytes() if Path("/proc").is_dir() else b"lakehouse.cli"
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            self.pid_file.unlink(missing_ok=True)
            return None
        if b"lakehouse.cli" not in command:  # the PID was reused
            self.pid_file.unlink(missing_ok=True)
            return None
        return pid

    def endpoints(self) -> dict:
        return json.loads(self.ready_file.read_text()) if self.ready_file.exists() else {}

    def start(self, command: list[str], timeout: float, ready: Callable[[], bool] | None = None,
              endpoints: dict | None = None, env: dict[str, str] | None = None) -> dict:
        """Run the lakehouse `command` (its --foreground form) detached and return its endpoints once it is
        ready: once it wrote the ready file or, for a server that cannot say so itself, once `ready()` is true
        (`endpoints` then go to the ready file)."""
        argv = [sys.executable, "-m", "lakehouse.cli", *command]
        running = self.pid()
        if running:
            raise UsageError(f"the {self.name} server is already running (pid {running}); stop it first")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        with open(self.log_file, "ab") as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            log.flush()
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True, env={**os.environ, **(env or {})})
        self.pid_file.write_text(f"{process.pid}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise ServiceFailed(f"the {self.name} server exited with code {process.returncode} before it was "
                                    f"ready:\n{self.tail()}", self.log_file)
            if ready is not None and ready():
                write_ready(self.ready_file, endpoints or {})
            if self.ready_file.exists():
                return self.endpoints()
            time.sleep(0.5)
        self.stop()
        raise ServiceFailed(f"the {self.name} server was not ready after {timeout:.0f} s; stopped it:\n{self.tail()}",
                            self.log_file)

    def stop(self, timeout: float = 30) -> bool:
        """SIGTERM the server's process group, SIGKILL it after `timeout`; False if it was not running."""
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.2)
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.pid_file.unlink(missing_ok=True)
        self.ready_file.unlink(missing_ok=True)
        return True

    def tail(self, lines: int = 20) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap it when it is our child
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def write_ready(file: Path, endpoints: dict) -> None:
    """Called by a server once it accepts connections (atomically: start() may read at any moment)."""
    partial = file.with_suffix(".tmp")
    partial.write_text(json.dumps(endpoints, indent=2))
    partial.replace(file)
