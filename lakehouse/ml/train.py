"""Training on Spark, tracked in MLflow, registered with aliases.

The feature table never leaves Spark: a Spark ML pipeline (mean imputation, logistic regression)
is fitted on a person-level split, evaluated on held-out persons, and its fitted numbers are logged
as a numpy pyfunc (logistic_pyfunc.py) so the registered model serves without Spark.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from pyspark.ml import Pipeline
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.feature import Imputer, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import io
from lakehouse.catalog import features_table
from lakehouse.config import Settings, TaskSpec
from lakehouse.io import Written
from lakehouse.ml import tracking
from lakehouse.runlog import git_revision

CHAMPION, CHALLENGER = "champion", "challenger"
PRIMARY_METRIC = "test_auroc"
SPLIT_BUCKETS = 10_000
PYFUNC_CODE = Path(__file__).with_name("logistic_pyfunc.py")
PIP_REQUIREMENTS = [f"mlflow=={mlflow.__version__}", "numpy", "pandas"]


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    model_name: str
    version: str
    metrics: dict[str, float]
    promoted: bool
    decision: str


def split_by_person(features: DataFrame, test_fraction: float) -> tuple[DataFrame, DataFrame]:
    """A deterministic person-level split: no person has rows on both sides."""
    bucket = F.pmod(F.xxhash64("person_key"), F.lit(SPLIT_BUCKETS))
    is_test = bucket < int(test_fraction * SPLIT_BUCKETS)
    return features.where(~is_test), features.where(is_test)


def fit(train: DataFrame, task: TaskSpec):
    imputed = [f"{name}__imputed" for name in task.features]
    pipeline = Pipeline(stages=[
        Imputer(strategy="mean", inputCols=task.features, outputCols=imputed),
        VectorAssembler(inputCols=imputed, outputCol="features_vector"),
        LogisticRegression(featuresCol="features_vector", labelCol="label", regParam=task.model.reg_param,
                           elasticNetParam=task.model.elastic_net_param, maxIter=task.model.max_iter,
                           standardization=True),
    ])
    return pipeline.fit(train.withColumn("label", F.col("label").cast("double")))


def evaluate(model, test: DataFrame) -> dict[str, float]:
    scored = model.transform(test.withColumn("label", F.col("label").cast("double")))
    scored = scored.withColumn("p", vector_to_array("probability")[1]).cache()  # three metric passes below
    metrics = {}
    for name, metric in (("test_auroc", "areaUnderROC"), ("test_auprc", "areaUnderPR")):
        metrics[name] = BinaryClassificationEvaluator(rawPredictionCol="probability", labelCol="label",
                                                      metricName=metric).evaluate(scored)
    row = scored.agg(F.avg((F.col("p") - F.col("label")) ** 2).alias("brier"), F.count("*").alias("n"),
                     F.sum("label").alias("positives")).first()
    metrics.update(test_brier=row.brier, n_test=float(row.n), test_positives=float(row.positives))
    scored.unpersist()
    return metrics


def pyfunc_config(model, task: TaskSpec) -> dict:
    imputer, lr = model.stages[0], model.stages[-1]
    surrogates = imputer.surrogateDF.first().asDict()
    return {
        "features": list(task.features),
        "means": [float(surrogates[name]) if surrogates[name] is not None else 0.0 for name in task.features],
        "coefficients": [float(c) for c in lr.coefficients.toArray()],
        "intercept": float(lr.intercept),
    }


def train_inputs(spark: SparkSession, settings: Settings, task: TaskSpec) -> Written:
    return io.describe(spark, features_table(task.name, task.features), settings.root)


def train(spark: SparkSession, settings: Settings, task: TaskSpec, source: Written) -> TrainResult:
    ref = features_table(task.name, task.features)
    features = io.read(spark, ref, settings.root, version=source.version)
    train_df, test_df = split_by_person(features, task.test_fraction)
    experiment_id = tracking.configure(settings)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{task.name}-logreg") as run:
        mlflow.set_tags({"task": task.name, "git_revision": git_revision(settings.project_dir) or "unknown",
                         "config_hash": settings.config_hash, "feature_table": ref.qualified,
                         "feature_table_version": str(source.version), "split": "person"})
        mlflow.log_params({"model_type": task.model.type, "reg_param": task.model.reg_param,
                           "elastic_net_param": task.model.elastic_net_param, "max_iter": task.model.max_iter,
                           "test_fraction": task.test_fraction, "features": ",".join(task.features)})
        mlflow.log_dict(task.model_dump(), "task.json")
        model = fit(train_df, task)
        metrics = evaluate(model, test_df)
        metrics["n_train"] = float(train_df.count())
        mlflow.log_metrics(metrics)
        example = test_df.select(*task.features).limit(5).toPandas()  # five rows, for the signature
        config = pyfunc_config(model, task)
        signature = infer_signature(example, model.transform(
            test_df.limit(5).withColumn("label", F.col("label").cast("double"))).select(
            vector_to_array("probability")[1]).toPandas().iloc[:, 0].to_numpy())
        mlflow.pyfunc.log_model(name="model", python_model=str(PYFUNC_CODE), model_config=config,
                                signature=signature, input_example=example, pip_requirements=PIP_REQUIREMENTS)
        version = mlflow.register_model(f"runs:/{run.info.run_id}/model", task.model_name).version
        promoted, decision = promote(task, str(version), metrics[PRIMARY_METRIC])
        mlflow.set_tags({"registered_version": str(version), "promotion": decision})
    return TrainResult(run.info.run_id, task.model_name, str(version), metrics, promoted, decision)


def current(settings: Settings, task: TaskSpec, alias: str = CHAMPION):
    """The model version behind an alias, or None."""
    tracking.configure(settings)
    try:
        return MlflowClient().get_model_version_by_alias(task.model_name, alias)
    except MlflowException:
        return None


def promote(task: TaskSpec, version: str, score: float) -> tuple[bool, str]:
    """Alias the new version `challenger`; move `champion` to it only if it beats the champion by the margin."""
    client = MlflowClient()
    client.set_registered_model_alias(task.model_name, CHALLENGER, version)
    try:
        current = client.get_model_version_by_alias(task.model_name, CHAMPION)
    except MlflowException:
        current = None
    if current is not None:
        best = client.get_run(current.run_id).data.metrics.get(PRIMARY_METRIC, float("-inf"))
        if score < best + task.promotion_margin:
            return False, f"kept champion v{current.version}: {PRIMARY_METRIC} {score:.4f} < {best:.4f} + margin"
    client.set_registered_model_alias(task.model_name, CHAMPION, version)
    before = f"v{current.version}" if current is not None else "none"
    return True, f"promoted v{version} to champion (was {before}); {PRIMARY_METRIC} {score:.4f}"
