"""What is missing outside the project (Java, the jar cache, a key) is said clearly, with the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONF

from lakehouse import jars, secrets
from lakehouse.cli import main
from lakehouse.config import load_settings
from lakehouse.errors import ConfigError, EnvironmentProblem
from lakehouse.spark import check_java


def test_missing_java_is_explained(monkeypatch, tmp_path):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    with pytest.raises(EnvironmentProblem, match="Java not found: Spark 4 needs Java 17"):
        check_java()


def test_java_is_present_here():
    assert "version" in check_java()


def test_missing_or_incomplete_jar_cache_says_run_make_setup(tmp_path):
    with pytest.raises(EnvironmentProblem, match="run `make setup`"):
        jars.cached(tmp_path)
    (tmp_path / jars.MANIFEST).write_text("delta-spark_4.2_2.13-4.4.0.jar\n")
    with pytest.raises(EnvironmentProblem, match="incomplete"):
        jars.cached(tmp_path)


def test_the_project_jar_cache_holds_delta_and_nothing_spark_ships(settings):
    cached = jars.cached(Path(settings.path(settings.main.jar_cache)))
    names = {jars.artifact_of(p.name) for p in cached}
    assert "delta-spark_4.2_2.13" in names and "delta-storage" in names
    shipped = {jars.artifact_of(p.name) for p in jars.spark_jar_dir().glob("*.jar")}
    assert not names & shipped


def test_missing_key_stops_refine_before_spark(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("LAKEHOUSE_VAULT_KEY")
    settings = load_settings(CONF, "local", str(tmp_path / "root"))
    no_file = settings.main.secrets.model_copy(update={"file": str(tmp_path / "absent.env")})
    settings = settings.model_copy(update={"main": settings.main.model_copy(update={"secrets": no_file})})
    with pytest.raises(EnvironmentProblem, match="LAKEHOUSE_VAULT_KEY is not set"):
        secrets.vault_key(settings)
    monkeypatch.setenv("LAKEHOUSE_VAULT_KEY", "abc")
    assert main(["refine", "--conf-dir", str(CONF), "--root", str(tmp_path / "root")]) == 2
    assert "must be 64 hex characters" in capsys.readouterr().err
    assert not (tmp_path / "root").exists()


def test_help_explains_every_subcommand():
    done = subprocess.run([sys.executable, "-m", "lakehouse.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for command in ("generate", "ingest", "refine", "build", "train", "score", "run-all"):
        assert command in done.stdout
    sub = subprocess.run([sys.executable, "-m", "lakehouse.cli", "ingest", "--help"], capture_output=True, text=True)
    assert "--conf-dir" in sub.stdout and "--root" in sub.stdout and "--landing" in sub.stdout


def test_configuring_a_second_root_points_mlflow_at_its_store_and_exports_neither(monkeypatch, tmp_path, settings):
    import mlflow

    from lakehouse.ml.tracking import configure, tracking_uri

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    first, second = (load_settings(CONF, "local", str(tmp_path / name)) for name in ("first", "second"))
    try:
        configure(first)
        configure(second)  # MLflow itself exports each URI it is given, for subprocesses: that must not stick
        assert mlflow.get_tracking_uri() == tracking_uri(second) == f"sqlite:///{tmp_path / 'second'}/mlflow/mlflow.db"
        assert mlflow.get_registry_uri() == tracking_uri(second)
        assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    finally:
        configure(settings)  # the suite's store again


def test_mlflow_defaults_to_sqlite_under_the_root_and_the_environment_wins(monkeypatch, tmp_path):
    from lakehouse.ml.tracking import tracking_uri

    settings = load_settings(CONF, "local", str(tmp_path / "root"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(settings) == f"sqlite:///{tmp_path / 'root'}/mlflow/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(settings) == "http://127.0.0.1:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    remote = load_settings(CONF, "local", "s3a://bucket/lakehouse")
    with pytest.raises(ConfigError, match="point MLflow at a tracking server"):
        tracking_uri(remote)
