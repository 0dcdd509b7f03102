"""Batch scoring with the registry's champion, merged so a re-run adds no duplicate."""

from __future__ import annotations

import mlflow
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakehouse import io
from lakehouse.catalog import features_table, predictions_table
from lakehouse.config import Settings, TaskSpec
from lakehouse.errors import LakehouseError
from lakehouse.io import Written
from lakehouse.ml.train import CHAMPION, current


def score_inputs(spark: SparkSession, settings: Settings, task: TaskSpec, alias: str = CHAMPION) -> list[Written]:
    """The feature table and the model version that would score it (the model as a pseudo-table)."""
    version = current(settings, task, alias)
    if version is None:
        raise LakehouseError(f"no model {task.model_name}@{alias} in the registry: run `lakehouse train "
                             f"--task {task.name}` first")
    return [io.describe(spark, features_table(task.name, task.features), settings.root),
            Written(f"models:/{task.model_name}@{alias}", int(version.version), 0)]


def score(spark: SparkSession, settings: Settings, task: TaskSpec, alias: str = CHAMPION) -> Written:
    version = current(settings, task, alias)
    uri = f"models:/{task.model_name}@{alias}"
    predict = mlflow.pyfunc.spark_udf(spark, uri, result_type="double", env_manager="local")
    ref = features_table(task.name, task.features)
    source = io.describe(spark, ref, settings.root)
    features = io.read(spark, ref, settings.root, version=source.version)
    predictions = features.select(  # every eligible index event, its outcome window open or closed
        "person_key", "encounter_key", "index_time", "hospital_id",
        predict(F.struct(*[F.col(c) for c in task.features])).alias("probability"),
        F.lit(task.model_name).alias("model_name"), F.lit(str(version.version)).alias("model_version"),
        F.lit(version.run_id).alias("run_id"), F.current_timestamp().alias("scored_at"))
    target = predictions_table(task.name)
    return io.merge(spark, predictions, target, settings.root, update_when="false")
