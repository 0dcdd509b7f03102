"""One Spark session with Delta and one tiny generated region for the whole test run.

Spark costs ~10 s to start and ~1 s per tiny query here, so the integration tests share a region
that is generated and pushed through every stage once (`region` fixture), and the unit tests share
one session. MLflow goes to a temporary SQLite store under the test root.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]
PROJECT_CONF = PROJECT / "conf"
# Smaller learners for the tests: the shipped tasks fit 60 boosting rounds per fold, and 2 cores cannot
# afford that for two tasks x (5 held-out hospitals + 1) fits in CI. Everything else is the shipped conf.
TEST_LEARNERS = {"logistic_regression": {"max_iter": 30}, "gbt": {"max_iter": 8, "max_depth": 3}}
# Without adaptive query execution: on tables of a few thousand rows every job is overhead, and AQE's re-planning
# at each exchange adds jobs without saving any (measured on two hospitals' first day, ingest to score: 237 s with
# it, 210 s without; link and build 23% faster). A sizing setting of the tests, like their two shuffle partitions:
# the shipped configuration keeps Spark's default (on), which a region's skewed joins and coalescing need.
TEST_SPARK_EXTRA = {"spark.sql.adaptive.enabled": "false"}


def _copy_conf(source: Path, project: Path) -> Path:
    """project/conf: a copy of `source`, beside a link to the project's jar cache (paths resolve from it)."""
    conf = project / "conf"
    shutil.copytree(source, conf)
    (project / ".cache").symlink_to(PROJECT / ".cache")
    return conf


def _test_conf() -> Path:
    """A copy of conf/ with TEST_LEARNERS and, in its local environment, TEST_SPARK_EXTRA."""
    conf = _copy_conf(PROJECT_CONF, Path(tempfile.mkdtemp(prefix="lakehouse-test-project-")))
    for file in (conf / "tasks").glob("*.yaml"):
        task = yaml.safe_load(file.read_text(encoding="utf-8"))
        for model in task["models"]:
            model.update(TEST_LEARNERS[model["type"]])
        file.write_text(yaml.safe_dump(task, sort_keys=False), encoding="utf-8")
    local = conf / "local" / "lakehouse.yaml"  # the jobs the tests run as processes (the CLI, the kill tests)
    overlay = yaml.safe_load(local.read_text(encoding="utf-8"))
    overlay["spark"]["extra"] = {**overlay["spark"].get("extra", {}), **TEST_SPARK_EXTRA}
    local.write_text(yaml.safe_dump(overlay, sort_keys=False), encoding="utf-8")
    return conf


CONF = _test_conf()
TEST_KEYS = {"LAKEHOUSE_PSEUDONYM_KEY": "11" * 32, "LAKEHOUSE_VAULT_KEY": "22" * 32}
TINY_REGION = {"hospitals": 5, "patients": 800, "days": 2, "seed": 7}  # every dialect
SPARK_TEST_CONF = {
    # one session runs the whole suite (~210 tests, thousands of queries): a 2 GB driver ran out of room to
    # broadcast late in the run, and the SQL status store need not keep every query's plan
    "spark.driver.memory": "4g",
    "spark.sql.ui.retainedExecutions": "50",
    "spark.ui.enabled": "false",
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    "spark.databricks.delta.snapshotPartitions": "2",
    **TEST_SPARK_EXTRA,
}


def one_task_conf(project: Path, task: str) -> Path:
    """project/conf: the test configuration with one task and its first learner (training is the pipeline's costliest
    stage; a test that needs a model, not a comparison of learners, needs no more), beside a link to the jar cache."""
    conf = _copy_conf(CONF, project)
    for file in (conf / "tasks").glob("*.yaml"):
        if file.stem != task:
            file.unlink()
    spec = yaml.safe_load((conf / "tasks" / f"{task}.yaml").read_text(encoding="utf-8"))
    spec["models"] = spec["models"][:1]
    (conf / "tasks" / f"{task}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return conf


os.environ.update(TEST_KEYS)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("LAKEHOUSE_ROOT", None)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


@pytest.fixture(scope="session")
def test_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lakehouse")


# a developer's shortcut: a folder where an earlier run built the tiny region (sample/ and root/) is reused
# instead of building it again (never set in CI: `make test` builds the region)
REUSE_REGION = os.environ.get("LAKEHOUSE_TEST_REGION")


@pytest.fixture(scope="session")
def settings(test_root):
    from lakehouse.config import load_settings

    return load_settings(CONF, "local", str(Path(REUSE_REGION) / "root" if REUSE_REGION else test_root / "root"))


@pytest.fixture(scope="session")
def spark(settings, test_root):
    from lakehouse.spark import build_spark

    events = test_root / "spark-events"  # the identity tests search them for the vault key
    events.mkdir(exist_ok=True)
    session = build_spark(settings, {**SPARK_TEST_CONF, "spark.eventLog.enabled": "true",
                                     "spark.eventLog.dir": str(events), "spark.eventLog.compress": "false"})
    yield session
    session.stop()


@dataclass
class Region:
    settings: object
    landing: Path
    truth: Path
    generated: object
    report: object


@pytest.fixture(scope="session")
def region(spark, settings, test_root) -> Region:
    """A tiny generated region run once through every stage (the `run-all` path)."""
    from lakehouse import pipeline
    from lakehouse.synth.generator import generate

    if REUSE_REGION:
        sample = Path(REUSE_REGION) / "sample"
        return Region(settings, sample / "landing", sample / "truth", None, None)
    generated = generate(test_root / "sample", **TINY_REGION)
    report = pipeline.run_all(spark, settings, str(generated.landing))
    return Region(settings, generated.landing, generated.truth, generated, report)
