"""A Spark standalone cluster on this machine, and jobs submitted to it the way a real cluster gets them.

`up` starts one master and `cluster.workers` workers from the pip-installed Spark (`sbin/spark-daemon.sh`;
pip's pyspark ships no `start-*.sh`) with their PIDs, logs and work folders under `<services.run_dir>/cluster/`,
and waits until the master's JSON status (`http://<host>:<webui_port>/json/`) lists every worker ALIVE.

`submit_command` is the `spark-submit` line of a stage: the project reaches the executors only as a packaged
build (`--py-files lakehouse-<version>.zip`) and the executors run a Python environment that holds the
third-party libraries but not the project (a venv whose `.pth` names this venv's site-packages folder, so the
editable install's own `.pth` is never processed). Code that only works because the driver's checkout is
importable everywhere fails here as it would on a real cluster.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import venv
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pyspark

import lakehouse
from lakehouse.config import ClusterSettings, Settings
from lakehouse.errors import UsageError
from lakehouse.services.daemon import ServiceFailed

SPARK_HOME = Path(pyspark.__file__).resolve().parent
MASTER = "org.apache.spark.deploy.master.Master"
WORKER = "org.apache.spark.deploy.worker.Worker"
PACKAGE = Path(lakehouse.__file__).resolve().parent
PROJECT = PACKAGE.parent


@dataclass(frozen=True)
class Cluster:
    spec: ClusterSettings
    folder: Path

    @classmethod
    def of(cls, settings: Settings) -> Cluster:
        return cls(settings.main.cluster, Path(settings.path(settings.main.services.run_dir)) / "cluster")

    @property
    def master_url(self) -> str:
        return f"spark://{self.spec.host}:{self.spec.port}"

    @property
    def status_url(self) -> str:
        return f"http://{self.spec.host}:{self.spec.webui_port}/json/"

    @property
    def event_dir(self) -> Path:
        """Every submitted application's event log (what ran where), readable by a history server."""
        return self.folder / "events"

    def worker_ports(self) -> list[int]:
        return [self.spec.worker_webui_port + i for i in range(self.spec.workers)]

    # --- the daemons ------------------------------------------------------------------------------

    def _daemon(self, action: str, cls: str, instance: int, *args: str) -> subprocess.CompletedProcess:
        env = {
            **os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": self.spec.host,
            "SPARK_LOG_DIR": str(self.folder / "logs"), "SPARK_PID_DIR": str(self.folder / "pids"),
            "SPARK_WORKER_DIR": str(self.folder / "work"), "SPARK_IDENT_STRING": "lakehouse",
        }
        return subprocess.run(["bash", str(SPARK_HOME / "sbin" / "spark-daemon.sh"), action, cls, str(instance),
                               *args], env=env, capture_output=True, text=True)

    def state(self) -> dict | None:
        """The master's JSON status, or None when no master answers."""
        try:
            with urllib.request.urlopen(self.status_url, timeout=3) as response:
                return json.load(response)
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def alive_workers(self, state: dict | None = None) -> list[dict]:
        state = self.state() if state is None else state
        return [w for w in (state or {}).get("workers", []) if w.get("state") == "ALIVE"]

    def up(self) -> dict:
        """Start the master and the workers (a no-op when they already run); the master's status once all are
        ALIVE. Fails before starting anything when a port is taken by something else."""
        state = self.state()
        if state is not None and len(self.alive_workers(state)) >= self.spec.workers:
            return state
        if state is None:
            ports = (self.spec.port, self.spec.webui_port, *self.worker_ports())
            busy = [p for p in ports if _in_use(self.spec.host, p)]
            if busy:
                raise UsageError(f"port {busy[0]} on {self.spec.host} is in use, so the cluster cannot start; stop "
                                 "what holds it (`lakehouse cluster down` for an earlier cluster), or set "
                                 "cluster.port / cluster.webui_port / cluster.worker_webui_port in "
                                 "conf/<env>/lakehouse.yaml")
            for sub in ("logs", "pids", "work"):
                (self.folder / sub).mkdir(parents=True, exist_ok=True)
            self.event_dir.mkdir(parents=True, exist_ok=True)
            self._check(self._daemon("start", MASTER, 1, "--host", self.spec.host, "--port", str(self.spec.port),
                                     "--webui-port", str(self.spec.webui_port)), "master")
            self._wait(lambda: (self.state() or {}).get("status") == "ALIVE", "the master")
        running = {w.get("webuiaddress", "").rsplit(":", 1)[-1] for w in self.alive_workers()}
        for number, port in enumerate(self.worker_ports(), start=1):
            if str(port) not in running:
                self._check(self._daemon("start", WORKER, number, "--host", self.spec.host,
                                         "--cores", str(self.spec.worker_cores), "--memory", self.spec.worker_memory,
                                         "--webui-port", str(port), self.master_url), f"worker {number}")
        self._wait(lambda: len(self.alive_workers()) >= self.spec.workers, f"{self.spec.workers} workers")
        return self.state() or {}

    def down(self) -> list[str]:
        """Stop every worker and the master this folder started; what was stopped."""
        stopped = []
        pids = self.folder / "pids"
        for pid_file in sorted(pids.glob(f"*{WORKER}-*.pid")) + sorted(pids.glob(f"*{MASTER}-*.pid")):
            cls = WORKER if WORKER in pid_file.name else MASTER
            instance = pid_file.stem.rsplit("-", 1)[-1]
            result = self._daemon("stop", cls, int(instance))
            if "stopping" in result.stdout:
                stopped.append(f"{cls.rsplit('.', 1)[-1].lower()} {instance}")
        # spark-daemon.sh only signals: wait until the ports are free, so an `up` right after works
        ports = (self.spec.port, self.spec.webui_port, *self.worker_ports())
        deadline = time.monotonic() + 30
        while stopped and any(_in_use(self.spec.host, p) for p in ports) and time.monotonic() < deadline:
            time.sleep(0.5)
        return stopped

    def _check(self, result: subprocess.CompletedProcess, what: str) -> None:
        if result.returncode != 0:
            raise ServiceFailed(f"the cluster's {what} did not start: {(result.stdout + result.stderr).strip()}",
                                self.folder / "logs")

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.spec.start_timeout_seconds
        while not ready():
            if time.monotonic() > deadline:
                raise ServiceFailed(f"{what} of the cluster at {self.master_url} did not come up within "
                                    f"{self.spec.start_timeout_seconds} s", self.folder / "logs")
            time.sleep(1)

    # --- what a submitted job gets ------------------------------------------------------------------

    def package(self) -> Path:
        """The project as executors get it: the `lakehouse` package zipped, for `--py-files` (rebuilt each time)."""
        target = self.folder / f"lakehouse-{lakehouse.__version__}.zip"
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".zip.partial")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(PACKAGE.rglob("*")):
                if file.is_file() and "__pycache__" not in file.parts:
                    archive.write(file, file.relative_to(PROJECT))
        partial.replace(target)
        return target

    def executor_python(self) -> Path:
        """A Python for the executors with this venv's third-party libraries and without the project."""
        env = self.folder / "executor-python"
        python = env / "bin" / "python"
        if not python.exists():
            venv.create(env, with_pip=False, symlinks=True)
            site_packages = next((env / "lib").glob("python*/site-packages"))
            ours = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
            # a plain path in a .pth is added to sys.path, but the .pth files inside it are not run: the
            # editable install's hook (which makes `lakehouse` importable) stays out
            (site_packages / "libraries.pth").write_text("\n".join(ours) + "\n")
        return python

    def submit_command(self, stage: str, settings: Settings, env_name: str, stage_args: list[str]) -> list[str]:
        """`spark-submit` of jobs/<stage>.py against this cluster."""
        job = PROJECT / "jobs" / f"{stage.replace('-', '_')}.py"
        if not job.exists():
            known = sorted(p.stem.replace("_", "-") for p in job.parent.glob("[!_]*.py"))
            raise UsageError(f"no job {stage!r}: jobs/ has {', '.join(known)}")
        self.event_dir.mkdir(parents=True, exist_ok=True)
        return [
            str(Path(sys.executable).parent / "spark-submit"), "--master", self.master_url,
            "--py-files", str(self.package()),
            "--conf", f"spark.pyspark.python={self.executor_python()}",
            "--conf", f"spark.pyspark.driver.python={sys.executable}",
            "--conf", f"spark.executor.memory={self.spec.executor_memory}",
            "--conf", "spark.eventLog.enabled=true", "--conf", "spark.eventLog.compress=false",
            "--conf", f"spark.eventLog.dir={self.event_dir}",
            "--conf", f"spark.driver.host={self.spec.host}",
            str(job), "--conf-dir", str(settings.conf_dir), "--env", env_name, "--root", settings.root, *stage_args,
        ]

    def submit_env(self) -> dict[str, str]:
        """spark-submit's environment: this venv's Spark, whatever python3 is first on PATH."""
        return {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": self.spec.host}


def _in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def tasks_per_worker(cluster: Cluster, app_id: str) -> dict[str, int]:
    """Tasks an application ran on each worker: the master's status names the workers, each worker's status
    names the application's executors on it, and the application's event log counts each executor's tasks."""
    state = cluster.state() or {}
    executors_of: dict[str, str] = {}  # executor id -> worker id
    for worker in state.get("workers", []):
        with urllib.request.urlopen(f"{worker['webuiaddress']}/json/", timeout=5) as response:
            seen = json.load(response)
        for executor in seen.get("executors", []) + seen.get("finishedexecutors", []):
            if executor.get("appid") == app_id:
                executors_of[str(executor["id"])] = worker["id"]
    counts = {worker["id"]: 0 for worker in state.get("workers", [])}
    for log in event_files(cluster.event_dir, app_id):
        with log.open(encoding="utf-8") as events:
            for line in events:
                if '"SparkListenerTaskEnd"' in line:
                    executor = str(json.loads(line)["Task Info"]["Executor ID"])
                    if executor in executors_of:
                        counts[executors_of[executor]] += 1
    return counts


def event_files(event_dir: Path, app_id: str) -> list[Path]:
    """An application's event log: one file, or Spark 4's rolling folder `eventlog_v2_<app>/events_<n>_<app>`."""
    rolling = event_dir / f"eventlog_v2_{app_id}"
    if rolling.is_dir():
        return sorted(rolling.glob("events_*"), key=lambda f: int(f.name.split("_")[1]))
    single = sorted(event_dir.glob(f"{app_id}*"))
    if not single:
        raise FileNotFoundError(f"no event log of {app_id} in {event_dir}")
    return single
