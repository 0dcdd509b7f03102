"""Risk prediction on the shared tiny region: leakage-proof features, labels from the outcome window only,
external validation per hospital, the registry's promotion rule, and a REST predictor that answers as the
batch job does."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from chispa import DataFramesNotEqualError, assert_approx_df_equality, assert_df_equality
from mlflow import MlflowClient
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakehouse import io, pipeline
from lakehouse.catalog import ENCOUNTER, PERSON, TIMELINE, features_table, predictions_table
from lakehouse.config import LookbackWindow
from lakehouse.gold.build import data_end
from lakehouse.gold.features import feature_names, features_for, index_events
from lakehouse.ml import tracking
from lakehouse.ml.evaluation import Curves, GroupMetrics
from lakehouse.ml.train import CHALLENGER, CHAMPION, PYFUNC_CODE, exported, fit, labelled, promotion_decision

pytestmark = pytest.mark.e2e
TASKS = ("readmission_30d", "inhospital_mortality")
VARIANTS = ("original", "after_deleted", "after_inserted", "before_deleted")
KEYS = ("person_key", "encounter_key", "index_time")  # one row per index event


@pytest.fixture
def registry(region):
    """MLflow pointed at the region's tracking store and registry."""
    tracking.configure(region.settings)
    return MlflowClient()


def _tagged(frame: DataFrame, variant: str) -> DataFrame:
    """One variant's rows under person keys of their own, so one feature run computes every variant."""
    return frame.withColumn("person_key", F.concat(F.lit(f"{variant}:"), "person_key"))


def _variant(features: DataFrame, variant: str, columns: list[str]) -> DataFrame:
    rows = features.where(F.col("person_key").startswith(f"{variant}:"))
    return rows.withColumn("person_key", F.substring_index("person_key", ":", -1)).select(*columns)


def _timeline_variants(timeline: DataFrame, index: DataFrame) -> tuple[dict[str, DataFrame], int]:
    """The timeline as it is; without each person's events at or after their index time; with copies of their
    earlier events moved to the index time and after it (values changed); without events at or before it."""
    at = timeline.join(index.select("person_key", "index_time"), "person_key", "left")
    after = F.col("index_time").isNotNull() & (F.col("time") >= F.col("index_time"))
    before = F.col("index_time").isNotNull() & (F.col("time") <= F.col("index_time"))
    copies = at.where(F.col("index_time").isNotNull() & ~after)
    moved = (copies.withColumn("time", F.col("index_time"))
             .unionByName(copies.withColumn("time", F.col("index_time") + F.expr("INTERVAL 1 HOURS")))
             .withColumn("numeric_value", F.col("numeric_value") * 3 + 1))
    variants = {"original": at, "after_deleted": at.where(~after), "after_inserted": at.unionByName(moved),
                "before_deleted": at.where(~before)}
    return {k: v.drop("index_time") for k, v in variants.items()}, at.where(after).count()


def _all_variants(task, settings, timeline, variants, index, end) -> DataFrame:
    tagged_index = index.where(F.lit(False))
    tagged_timeline = timeline.where(F.lit(False))
    for name, frame in variants.items():
        tagged_index = tagged_index.unionByName(_tagged(index, name))
        tagged_timeline = tagged_timeline.unionByName(_tagged(frame, name))
    return features_for(tagged_index, tagged_timeline, task, settings.features, end).cache()


def test_features_see_nothing_from_the_index_time_on_and_labels_nothing_before_it(spark, region):
    """The property, on the in-hospital mortality task (index 24 h into the stay, so the same stay goes on
    after it): deleting every event at or after each person's index time, or inserting events there, leaves
    the features identical; deleting every event up to the index leaves the labels identical; and a
    deliberately leaky window (ending 48 h after the index) is caught by the same comparison."""
    settings, root = region.settings, region.settings.root
    task = settings.tasks["inhospital_mortality"]
    timeline = io.read(spark, TIMELINE, root)
    every = index_events(task, settings.features, io.read(spark, ENCOUNTER, root), io.read(spark, PERSON, root))
    first = every.groupBy("person_key").agg(F.min("index_time").alias("index_time"))
    index = every.join(first, ["person_key", "index_time"]).cache()  # one index event per person
    variants, post_index_events = _timeline_variants(timeline, index)
    assert post_index_events > 1000  # the property is tested on data that has something to leak
    end = data_end(timeline)
    features = _all_variants(task, settings, timeline, variants, index, end)
    columns = [*KEYS, *task.features]
    original = _variant(features, "original", columns)
    assert original.count() == index.count() > 100
    assert original.where(F.col("vitals_spo2_count_24h") > 0).count() > 100  # first-day vitals are seen
    for variant in ("after_deleted", "after_inserted"):  # means and slopes are double sums: equal to 1e-9
        assert_approx_df_equality(original.orderBy(*KEYS), _variant(features, variant, columns)
                                  .orderBy(*KEYS), 1e-9, allow_nan_equality=True)
    labels = ["person_key", "encounter_key", "index_time", "label"]
    got = _variant(features, "before_deleted", labels)
    assert got.where("label = 1").count() > 5
    assert_df_equality(_variant(features, "original", labels), got, ignore_row_order=True)

    leak = LookbackWindow.model_construct(name="leak", hours=24, end_hours=48)  # config refuses it; built by hand
    leaky = task.model_copy(update={"lookback": [*task.lookback, leak]})
    leaky = leaky.model_copy(update={"features": tuple(feature_names(leaky, settings.features))})
    assert any(name.endswith("_leak") for name in leaky.features)
    features = _all_variants(leaky, settings, timeline, {k: variants[k] for k in VARIANTS[:2]}, index, end)
    leaky_columns = [*KEYS, *leaky.features]
    with pytest.raises(DataFramesNotEqualError):
        assert_approx_df_equality(_variant(features, "original", leaky_columns).orderBy(*KEYS),
                                  _variant(features, "after_deleted", leaky_columns).orderBy(*KEYS), 1e-9,
                                  allow_nan_equality=True)


def _metrics(auroc: float, ece: float) -> GroupMetrics:
    return GroupMetrics(n=100, positives=10, auroc=auroc, auprc=0.3, brier=0.1, calibration_slope=1.0,
                        calibration_intercept=0.0, ece=ece, curves=Curves([], [], []))


def test_promotion_needs_a_better_auroc_by_the_margin_and_no_worse_calibration(settings):
    task = settings.tasks["readmission_30d"]
    task = task.model_copy(update={"promotion": task.promotion.model_copy(update={"margin": 0.01,
                                                                                  "max_ece_increase": 0.005})})
    champion = {"pooled/auroc": 0.80, "pooled/ece": 0.02}
    cases = [(_metrics(0.70, 0.5), None, True, "no champion"),
             (_metrics(0.82, 0.024), champion, True, "promoted over v3"),
             (_metrics(0.805, 0.01), champion, False, "does not beat 0.8000 + margin 0.01"),
             (_metrics(0.85, 0.03), champion, False, "pooled/ece 0.0300 > 0.0200 + 0.005"),
             (_metrics(float("nan"), 0.01), champion, False, "does not beat")]
    for challenger, current, promoted, reason in cases:
        decision = promotion_decision(task, challenger, current, "3" if current else None)
        assert decision[0] is promoted and reason in decision[1], decision


@pytest.mark.parametrize("task_name", TASKS)
def test_training_validates_on_every_held_out_hospital_and_logs_it(spark, region, registry, task_name):
    settings, root = region.settings, region.settings.root
    task = settings.tasks[task_name]
    features = io.read(spark, features_table(task_name, task.features), root)
    data = labelled(features)
    hospitals = sorted(r.hospital_id for r in data.select("hospital_id").distinct().collect())
    assert len(hospitals) == 5
    champion = registry.get_model_version_by_alias(task.model_name, CHAMPION)
    run = mlflow.get_run(champion.run_id)
    metrics, tags = run.data.metrics, run.data.tags
    assert tags["feature_table"] == f"gold.features_{task_name}" and tags["validation"] == "leave_one_hospital_out"
    assert json.loads(tags["source_versions"]).keys() == {"gold.patient_timeline", "silver.encounter", "silver.person"}
    assert metrics["pooled/n"] == data.count() and metrics["n_positives"] == data.where("label = 1").count()
    for hospital in hospitals:  # every held-out hospital scored, and its rows add up to the pooled count
        assert metrics[f"hospital/{hospital}/n"] == data.where(F.col("hospital_id") == hospital).count()
        assert 0 <= metrics[f"hospital/{hospital}/brier"] <= 1
    assert {f"sex/{s}/auroc" for s in ("female", "male")} <= metrics.keys()
    assert {f"age/{b}/n" for b in ("45-64", "65-79", "80_plus")} <= metrics.keys()
    for name in ("auroc", "auprc", "brier", "calibration_slope", "calibration_intercept", "ece"):
        assert math.isfinite(metrics[f"pooled/{name}"]) and f"baseline/pooled/{name}" in metrics
    # a fold leaves out of training every person with an index event in the held-out hospital
    by_person = data.groupBy("person_key").agg(F.collect_set("hospital_id").alias("h")).where(F.size("h") > 1)
    for hospital in hospitals:
        expected = by_person.where(F.array_contains("h", hospital)).count()
        assert metrics[f"fold/{hospital}/excluded_persons"] == expected
    children = mlflow.search_runs(experiment_ids=[run.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert sorted(children["params.model.type"]) == ["gbt", "logistic_regression"]
    artifacts = {a.path for a in registry.list_artifacts(run.info.run_id)}
    assert {"model_card.md", "feature_importance.json", "task.json", "plots"} <= artifacts
    info = mlflow.models.get_model_info(f"models:/{task.model_name}/{champion.version}")
    assert info.signature.inputs.input_names() == list(task.features) and info.saved_input_example_info is not None
    plots = {Path(a.path).name for a in registry.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"roc.png", "pr.png", "calibration.png"}
    card = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/model_card.md")
    assert "## Intended use" in card and "## Limitations" in card
    assert all(f"| hospital/{h} |" in card for h in hospitals)
    importance = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/feature_importance.json")
    assert set(importance) == set(task.features) and abs(sum(importance.values()) - 1) < 1e-6


@pytest.mark.parametrize("task_name", TASKS)
def test_the_champion_scores_every_eligible_index_event_once(spark, region, registry, task_name):
    settings, root = region.settings, region.settings.root
    task = settings.tasks[task_name]
    champion = registry.get_model_version_by_alias(task.model_name, CHAMPION)
    features = io.read(spark, features_table(task_name, task.features), root)
    predictions = io.read(spark, predictions_table(task_name), root)
    assert predictions.count() == features.count() > 100
    assert features.where("label IS NULL").count() > 0 or task_name == "inhospital_mortality"  # open windows
    keys = predictions.select("person_key", "encounter_key", "index_time", "model_version")
    assert keys.distinct().count() == predictions.count()
    assert {r.model_version for r in predictions.select("model_version").distinct().collect()} == {
        str(champion.version)}
    assert predictions.where("probability < 0 OR probability > 1 OR probability IS NULL").count() == 0
    pipeline.run_score(spark, settings, task_name, force=True)  # a re-run merges onto the same keys
    assert io.read(spark, predictions_table(task_name), root).count() == predictions.count()


def test_exported_models_predict_what_spark_predicts(spark, region, tmp_path):
    """The pyfunc (numpy, no Spark) gives Spark's own probabilities for both learners, missing values included."""
    task = region.settings.tasks["readmission_30d"]
    data = labelled(io.read(spark, features_table(task.name, task.features), region.settings.root))
    rows = data.orderBy("person_key", "index_time").limit(200)
    for spec in task.models:
        fitted = fit(data, spec, list(task.features))
        expected = fitted.predict(rows).select("p").toPandas()["p"]
        config = tmp_path / f"{spec.type}.json"
        config.write_text(json.dumps(exported(fitted)))
        mlflow.pyfunc.save_model(str(tmp_path / spec.type), python_model=str(PYFUNC_CODE), model_config=str(config))
        local = mlflow.pyfunc.load_model(str(tmp_path / spec.type)).predict(rows.select(*task.features).toPandas())
        assert pd.Series(local).round(9).tolist() == expected.round(9).tolist(), spec.type
        assert rows.select(*task.features).toPandas().isna().to_numpy().any()  # the imputation is exercised


def test_retraining_on_the_same_data_registers_a_challenger_and_keeps_the_champion(spark, region, registry):
    settings = region.settings
    task = settings.tasks["readmission_30d"]
    client = registry
    before = client.get_model_version_by_alias(task.model_name, CHAMPION)
    [result] = pipeline.run_train(spark, settings, task.name, force=True)
    assert not result.promoted and "does not beat" in result.decision
    assert str(client.get_model_version_by_alias(task.model_name, CHALLENGER).version) == result.version
    assert client.get_model_version_by_alias(task.model_name, CHAMPION).version == before.version
    assert mlflow.get_run(result.run_id).data.tags["promotion"] == result.decision
    assert client.get_model_version(task.model_name, result.version).tags["promotion"] == result.decision


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_rest_endpoint_answers_as_the_batch_job(spark, region, registry, tmp_path):
    """`mlflow models serve` of the champion on 127.0.0.1, a real server process, asked for 50 index events."""
    settings, root = region.settings, region.settings.root
    task = settings.tasks["inhospital_mortality"]
    joined = (io.read(spark, features_table(task.name, task.features), root)
              .join(io.read(spark, predictions_table(task.name), root), ["person_key", "encounter_key", "index_time"])
              .orderBy("person_key", "index_time").limit(50).toPandas())
    port = _free_port()
    venv_bin = Path(sys.executable).parent  # mlflow and the uvicorn it runs
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking.tracking_uri(settings),
           "PATH": f"{venv_bin}:{os.environ['PATH']}"}
    mlflow_bin = venv_bin / "mlflow"
    log = tmp_path / "serve.log"
    with open(log, "w", encoding="utf-8") as out:
        server = subprocess.Popen([str(mlflow_bin), "models", "serve", "-m", f"models:/{task.model_name}@champion",
                                   "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                                  env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                assert server.poll() is None and time.time() < deadline, log.read_text(encoding="utf-8")[-3000:]
                time.sleep(1)
        body = json.dumps({"dataframe_split": json.loads(joined[list(task.features)].to_json(orient="split",
                                                                                           index=False))})
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body.encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answered = json.loads(response.read())["predictions"]
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the server and its workers
            server.wait(timeout=30)
    assert pd.Series(answered).round(9).tolist() == joined["probability"].round(9).tolist()
