"""The cluster smoke test: a standalone master and two workers on 127.0.0.1, started and stopped by
`lakehouse cluster`, and the whole pipeline submitted to them with spark-submit on a small region.

The project reaches the executors only as a `--py-files` build and the executors run a Python without the
project installed, so an assumption that holds only in local mode (the checkout importable on every
executor, a path resolved against the driver's folder) breaks this test. The master's JSON status names the
workers, each worker's status names the application's executors on it, and the application's event log
counts their tasks: both workers must have run tasks.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
import yaml
from conftest import CONF, TEST_SPARK_EXTRA, one_task_conf

from lakehouse.cluster import Cluster, tasks_per_worker
from lakehouse.config import load_settings
from lakehouse.errors import UsageError

SMOKE_REGION = {"hospitals": 2, "patients": 200, "days": 1, "seed": 11}
SMOKE_TASK = "readmission_30d"  # one task and its first learner: training is the pipeline's costliest stage
SUBMIT_TIMEOUT = 600  # the whole test stays within six minutes


def _free_port(taken: set[int], run: int = 1) -> int:
    """The first of `run` consecutive free ports on loopback, above the usual ones."""
    for base in range(42000, 43000):
        ports = range(base, base + run)
        if taken.isdisjoint(ports) and not any(_listening(p) for p in ports):
            taken.update(ports)
            return base
    raise RuntimeError("no free ports on 127.0.0.1")


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _lakehouse(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """The CLI in its own process group, all of which (spark-submit's JVM too) is killed on a timeout."""
    with subprocess.Popen([sys.executable, "-m", "lakehouse.cli", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True,
                          env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}) as process:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            pytest.fail(f"lakehouse {' '.join(args)} ran over {timeout} s:\n{err[-4000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.fixture(scope="module")
def smoke_conf(tmp_path_factory):
    """The test configuration with one task and one learner, and an environment `smoke`: the cluster on ports
    nothing else here uses, spark.master pointing at it."""
    conf = one_task_conf(tmp_path_factory.mktemp("smoke-project"), SMOKE_TASK)
    taken: set[int] = set()
    port, webui, workers = _free_port(taken), _free_port(taken), _free_port(taken, 2)
    # a tiny region is hundreds of tiny Spark jobs, each waiting more than computing: two partitions, no
    # locality wait and no adaptive re-planning keep them short
    overlay = {"spark": {"master": f"spark://127.0.0.1:{port}", "shuffle_partitions": 2,
                         "extra": {"spark.locality.wait": "0s", **TEST_SPARK_EXTRA}},
               "cluster": {"port": port, "webui_port": webui, "worker_webui_port": workers}}
    (conf / "smoke").mkdir()
    (conf / "smoke" / "lakehouse.yaml").write_text(yaml.safe_dump(overlay))
    return conf


@pytest.fixture(scope="module")
def cluster(smoke_conf, tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster-root")
    settings = load_settings(smoke_conf, "smoke", str(root))
    handle = Cluster.of(settings)
    up = _lakehouse("cluster", "--conf-dir", str(smoke_conf), "--env", "smoke", "up")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield handle, settings
    finally:
        down = _lakehouse("cluster", "--conf-dir", str(smoke_conf), "--env", "smoke", "down")
        assert down.returncode == 0, down.stderr
        assert handle.state() is None, "the master still answers after cluster down"


def test_cluster_runs_the_pipeline_on_both_workers(cluster, smoke_conf, tmp_path):
    handle, settings = cluster
    state = handle.state()
    assert state["status"] == "ALIVE" and len(handle.alive_workers(state)) == 2
    assert state["url"] == handle.master_url

    # the executors' Python has the libraries but not the project
    python = handle.executor_python()
    bare = subprocess.run([str(python), "-c", "import lakehouse"], capture_output=True, text=True, cwd=tmp_path)
    assert bare.returncode != 0 and "No module named 'lakehouse'" in bare.stderr
    libraries = subprocess.run([str(python), "-c", "import pyspark, mlflow, pandas, pyarrow"],
                               capture_output=True, text=True, cwd=tmp_path)
    assert libraries.returncode == 0, libraries.stderr

    from lakehouse.synth.generator import generate

    landing = generate(tmp_path / "sample", **SMOKE_REGION).landing
    run = _lakehouse("cluster", "--conf-dir", str(smoke_conf), "--env", "smoke", "--root", settings.root,
                     "submit", "run-all", "--landing", str(landing), "--log-format", "text", timeout=SUBMIT_TIMEOUT)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "--py-files" in run.stderr and str(python) in run.stderr  # the spark-submit line it ran
    assert "== lakehouse run-all summary" in run.stdout
    assert f"trained: lakehouse_{SMOKE_TASK}" in run.stdout

    done = handle.state()["completedapps"]
    assert len(done) == 1 and done[0]["state"] == "FINISHED"
    tasks = tasks_per_worker(handle, done[0]["id"])
    assert len(tasks) == 2 and all(n > 0 for n in tasks.values()), tasks


def test_cluster_refuses_a_port_in_use(tmp_path):
    settings = load_settings(CONF, "local", str(tmp_path / "root"))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        spec = settings.main.cluster.model_copy(update={"port": port})
        with pytest.raises(UsageError, match=f"port {port} on 127.0.0.1 is in use"):
            Cluster(spec, tmp_path / "cluster").up()
    assert not (tmp_path / "cluster" / "pids").exists()  # refused before anything started
