"""Training on Spark, validated hospital by hospital, tracked in MLflow, registered with aliases.

The feature table never leaves Spark. For every model of the task (the logistic regression baseline
first, then gradient-boosted trees) and, by default, every hospital: fit on the other hospitals'
index events, leaving out persons with any index event in the held-out hospital, and score the
held-out hospital. The held-out scores, pooled and per hospital, sex and age band, are the model's
external validation (lakehouse/ml/evaluation.py). The best model by pooled external AUROC is fitted
again on every hospital, logged as a numpy pyfunc (risk_pyfunc.py) that serves without Spark,
registered as `challenger`, and promoted to `champion` only if it beats the champion.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from pyspark.ml.classification import GBTClassifier, LogisticRegression
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import chaos, io, progress
from lakehouse.catalog import features_table
from lakehouse.config import ModelSpec, Settings, TaskSpec
from lakehouse.io import Written
from lakehouse.ml import tracking
from lakehouse.ml.evaluation import GROUP, LABEL, PROB, GroupMetrics, evaluate, plot
from lakehouse.ml.model_card import model_card
from lakehouse.runlog import git_revision

CHAMPION, CHALLENGER = "champion", "challenger"
POOLED = "pooled"
PRIMARY_METRIC, CALIBRATION_METRIC = f"{POOLED}/auroc", f"{POOLED}/ece"
SPLIT_BUCKETS = 10_000
AGE_BANDS = ((45, "18-44"), (65, "45-64"), (80, "65-79"))  # and 80_plus
PYFUNC_CODE = Path(__file__).with_name("risk_pyfunc.py")
PIP_REQUIREMENTS = [f"mlflow=={mlflow.__version__}", "numpy", "pandas"]


@dataclass(frozen=True)
class Fold:
    """One external validation: fit on `train`, score `test` (rows of `held_out`)."""

    held_out: str
    train: DataFrame
    test: DataFrame
    excluded_persons: int = 0  # persons left out of training for having an index event in the held-out hospital


@dataclass
class ModelReport:
    spec: ModelSpec
    metrics: dict[str, GroupMetrics]
    run_id: str
    importance: dict[str, float] = field(default_factory=dict)

    @property
    def auroc(self) -> float:
        return self.metrics[POOLED].auroc


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    model_name: str
    version: str
    metrics: dict[str, float]
    promoted: bool
    decision: str


# --- data ---------------------------------------------------------------------------------------

def labelled(features: DataFrame) -> DataFrame:
    """Index events whose outcome window is over (label 0 or 1)."""
    return features.where(F.col("label").isNotNull()).withColumn(LABEL, F.col("label").cast("double"))


def split_by_person(features: DataFrame, test_fraction: float) -> tuple[DataFrame, DataFrame]:
    """A deterministic person-level split: no person has rows on both sides."""
    bucket = F.pmod(F.xxhash64("person_key"), F.lit(SPLIT_BUCKETS))
    is_test = bucket < int(test_fraction * SPLIT_BUCKETS)
    return features.where(~is_test), features.where(is_test)


def leave_one_hospital_out(data: DataFrame, hospitals: list[str]) -> list[Fold]:
    """For each hospital: test on its index events; train on the others' minus persons seen in it."""
    shared = (data.groupBy("person_key").agg(F.collect_set("hospital_id").alias("hospitals"))
              .where(F.size("hospitals") > 1).select(F.explode("hospitals").alias("hospital_id"))
              .groupBy("hospital_id").count().collect())  # one row per hospital: persons it shares with others
    excluded = {row.hospital_id: row["count"] for row in shared}
    folds = []
    for hospital in hospitals:
        test = data.where(F.col("hospital_id") == hospital)
        train = data.where(F.col("hospital_id") != hospital).join(test.select("person_key"), "person_key", "left_anti")
        folds.append(Fold(hospital, train, test, excluded.get(hospital, 0)))
    return folds


def folds_of(data: DataFrame, task: TaskSpec) -> list[Fold]:
    if task.validation == "person_split":
        train, test = split_by_person(data, task.test_fraction)
        return [Fold("person_split", train, test)]
    hospitals = sorted(r.hospital_id for r in data.select("hospital_id").distinct().collect())  # a handful
    return leave_one_hospital_out(data, hospitals)


# --- fitting ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fitted:
    spec: ModelSpec
    features: list[str]
    means: list[float]
    model: object  # a Spark ML classification model on the assembled vector

    def predict(self, df: DataFrame) -> DataFrame:
        """df with PROB, the probability of the positive class."""
        scored = self.model.transform(_assembled(df, self.features, self.means))
        return scored.withColumn(PROB, vector_to_array("probability")[1]).drop("features_vector", "rawPrediction",
                                                                               "probability", "prediction")


def _assembled(df: DataFrame, features: list[str], means: list[float]) -> DataFrame:
    filled = df.fillna(dict(zip(features, means, strict=True)))
    return VectorAssembler(inputCols=features, outputCol="features_vector").transform(filled)


def feature_means(train: DataFrame, features: list[str]) -> list[float]:
    """Imputation values from the training rows (0 for a feature never observed); one aggregate row."""
    row = train.agg(*[F.avg(name).alias(name) for name in features]).first()
    return [float(row[name]) if row[name] is not None else 0.0 for name in features]


def fit(train: DataFrame, spec: ModelSpec, features: list[str], seed: int = 7) -> Fitted:
    means = feature_means(train, features)
    if spec.type == "logistic_regression":
        learner = LogisticRegression(featuresCol="features_vector", labelCol=LABEL, regParam=spec.reg_param,
                                     elasticNetParam=spec.elastic_net_param, maxIter=spec.max_iter,
                                     standardization=True)
    else:
        learner = GBTClassifier(featuresCol="features_vector", labelCol=LABEL, maxIter=spec.max_iter,
                                maxDepth=spec.max_depth, stepSize=spec.step_size,
                                subsamplingRate=spec.subsampling_rate,
                                minInstancesPerNode=spec.min_instances_per_node, seed=seed)
    return Fitted(spec, features, means, learner.fit(_assembled(train, features, means)))


def _tree_arrays(java_root) -> dict[str, list]:
    """A Spark decision tree as flat arrays (node 0 is the root; -1 children mark a leaf)."""
    arrays: dict[str, list] = {"feature": [], "threshold": [], "left": [], "right": [], "value": []}
    pending = [(java_root, None, None)]
    while pending:
        node, parent, side = pending.pop()
        i = len(arrays["feature"])
        if parent is not None:
            arrays[side][parent] = i
        inner = node.getClass().getSimpleName() == "InternalNode"
        arrays["feature"].append(node.split().featureIndex() if inner else -1)
        arrays["threshold"].append(float(node.split().threshold()) if inner else 0.0)
        arrays["left"].append(-1)
        arrays["right"].append(-1)
        arrays["value"].append(float(node.prediction()))
        if inner:
            pending += [(node.rightChild(), i, "right"), (node.leftChild(), i, "left")]
    return arrays


def exported(fitted: Fitted) -> dict:
    """The pyfunc's model_config: the fitted numbers, nothing of Spark."""
    config = {"features": fitted.features, "means": fitted.means, "model_type": fitted.spec.type}
    model = fitted.model
    if fitted.spec.type == "logistic_regression":
        config.update(coefficients=[float(c) for c in model.coefficients.toArray()], intercept=float(model.intercept))
    else:
        config.update(trees=[_tree_arrays(t._java_obj.rootNode()) for t in model.trees],
                      tree_weights=[float(w) for w in model.treeWeights])
    return config


def importance(fitted: Fitted, stddev: dict[str, float]) -> dict[str, float]:
    """GBT: Spark's split-gain importance; logistic: |coefficient| x the feature's standard deviation."""
    if fitted.spec.type == "gbt":
        values = fitted.model.featureImportances.toArray()
    else:
        values = [abs(c) * stddev.get(n, 0.0) for c, n in zip(fitted.model.coefficients.toArray(), fitted.features,
                                                                strict=True)]
    total = sum(values) or 1.0
    ranked = sorted(zip(fitted.features, values, strict=True), key=lambda kv: -kv[1])
    return {name: float(value) / total for name, value in ranked}


# --- evaluation groups ----------------------------------------------------------------------------

def _age_band() -> Column:
    band = F.lit("80_plus")
    for upper, label in reversed(AGE_BANDS):
        band = F.when(F.col("age") < upper, label).otherwise(band)
    return F.when(F.col("age").isNull(), "unknown").otherwise(band)


def grouped(scored: DataFrame) -> DataFrame:
    """Each held-out score once per group it belongs to: pooled, its hospital, its sex, its age band."""
    sex = F.when(F.col("sex_male") == 1, "male").when(F.col("sex_male") == 0, "female").otherwise("unknown") \
        if "sex_male" in scored.columns else F.lit("unknown")
    age = _age_band() if "age" in scored.columns else F.lit("unknown")
    groups = F.array(F.lit(POOLED), F.concat(F.lit("hospital/"), F.col("hospital_id")),
                     F.concat(F.lit("sex/"), sex), F.concat(F.lit("age/"), age))
    return scored.select(F.explode(groups).alias(GROUP), LABEL, PROB)


def metric_dict(metrics: dict[str, GroupMetrics]) -> dict[str, float]:
    return {f"{group}/{name}": value for group, m in metrics.items() for name, value in m.as_dict().items()}


# --- the training job -----------------------------------------------------------------------------

def train_inputs(spark: SparkSession, settings: Settings, task: TaskSpec) -> Written:
    return io.describe(spark, features_table(task.name, task.features), settings.root)


JOB_RUN_TAG = "lakehouse_run"  # the `ops.job_run` run that trained an MLflow run (its nested runs too)


def validate_model(spec: ModelSpec, folds: list[Fold], task: TaskSpec, out: Path,
                   job_run: str | None = None) -> ModelReport:
    """External validation of one model over the folds, in its own nested MLflow run."""
    features = list(task.features)
    with mlflow.start_run(run_name=f"{task.name}-{spec.type}", nested=True,
                          tags={JOB_RUN_TAG: job_run or "none"}) as run:
        mlflow.log_params({f"model.{k}": v for k, v in spec.model_dump().items()})
        scored = None
        for n, fold in enumerate(folds, start=1):
            progress.step(f"validate {spec.type}", fold.held_out, n, len(folds), "folds")
            fitted = fit(fold.train, spec, features)
            predicted = fitted.predict(fold.test).select("hospital_id", *[c for c in ("age", "sex_male")
                                                                          if c in features], LABEL, PROB)
            scored = predicted if scored is None else scored.unionByName(predicted)
        scored = scored.localCheckpoint()  # the folds' fits are not repeated by each metric pass
        metrics = evaluate(grouped(scored))
        mlflow.log_metrics(metric_dict(metrics))
        folder = out / spec.type
        folder.mkdir(parents=True, exist_ok=True)
        for png in plot({g: m for g, m in metrics.items() if g == POOLED or g.startswith("hospital/")}, folder,
                        f"{task.name} {spec.type}: external validation"):
            mlflow.log_artifact(str(png))
        report = ModelReport(spec, metrics, run.info.run_id)
    return report


def train(spark: SparkSession, settings: Settings, task: TaskSpec, source: Written,
          job_run: str | None = None) -> TrainResult:
    ref = features_table(task.name, task.features)
    data = labelled(io.read(spark, ref, settings.root, version=source.version)).persist()
    features = list(task.features)
    experiment_id = tracking.configure(settings)
    out = Path(tempfile.mkdtemp(prefix=f"train-{task.name}-"))
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{task.name}") as run:
        versions = data.select("source_versions").first()
        mlflow.set_tags({"task": task.name, "git_revision": git_revision(settings.project_dir) or "unknown",
                         "config_hash": settings.config_hash, "feature_table": ref.qualified,
                         "feature_table_version": str(source.version), "validation": task.validation,
                         "source_versions": json.dumps(dict(versions[0]) if versions else {}),
                         JOB_RUN_TAG: job_run or "none"})
        mlflow.log_dict(task.model_dump(mode="json"), "task.json")
        folds = folds_of(data, task)
        counts = data.agg(F.count("*").alias("n"), F.sum(LABEL).alias("positives"),
                          *[F.stddev(n).alias(n) for n in features]).first()
        stddev = {n: float(counts[n] or 0.0) for n in features}
        mlflow.log_metrics({"n_index_events": float(counts.n), "n_positives": float(counts.positives or 0),
                            **{f"fold/{f.held_out}/excluded_persons": float(f.excluded_persons) for f in folds}})
        reports = [validate_model(spec, folds, task, out, job_run) for spec in task.models]
        best = max(reports, key=lambda r: (r.auroc if r.auroc == r.auroc else -1.0))  # NaN ranks last
        progress.step(f"fit {best.spec.type} on every hospital", task.name, rows=int(counts.n))
        final = fit(data, best.spec, features)
        best.importance = importance(final, stddev)
        baseline = {f"baseline/{k}": v for k, v in metric_dict(reports[0].metrics).items() if k.startswith(POOLED)}
        mlflow.log_metrics({**metric_dict(best.metrics), **baseline})
        mlflow.log_dict(best.importance, "feature_importance.json")
        card = model_card(task, source, counts, folds, reports, best)
        mlflow.log_text(card, "model_card.md")
        for png in sorted((out / best.spec.type).glob("*.png")):
            mlflow.log_artifact(str(png), "plots")
        example = data.select(*features).limit(5).toPandas()  # five rows, for the signature
        config_file = out / "model_config.json"
        config_file.write_text(json.dumps(exported(final)))
        signature = infer_signature(example, final.predict(data.limit(5)).select(PROB).toPandas()[PROB].to_numpy())
        mlflow.pyfunc.log_model(name="model", python_model=str(PYFUNC_CODE), model_config=str(config_file),
                                signature=signature, input_example=example, pip_requirements=PIP_REQUIREMENTS)
        version = mlflow.register_model(f"runs:/{run.info.run_id}/model", task.model_name).version
        chaos.committed(f"registry:{task.model_name}")
        promoted, decision = promote(task, str(version), best.metrics[POOLED])
        chaos.committed(f"registry:{task.model_name}")
        mlflow.set_tags({"registered_version": str(version), "best_model": best.spec.type, "promotion": decision,
                         "promoted": str(promoted).lower()})
    data.unpersist()
    return TrainResult(run.info.run_id, task.model_name, str(version), metric_dict(best.metrics), promoted, decision)


# --- registry -------------------------------------------------------------------------------------

def mark_killed(settings: Settings, job_run: str) -> int:
    """End the MLflow runs a killed `train` run left RUNNING as KILLED (its model versions stay: one is only
    registered once its model is fully logged); how many were."""
    experiment = tracking.configure(settings)
    client = MlflowClient()
    runs = client.search_runs([experiment], f"tags.{JOB_RUN_TAG} = '{job_run}' AND attributes.status = 'RUNNING'")
    for run in runs:
        client.set_terminated(run.info.run_id, "KILLED")
    return len(runs)


def current(settings: Settings, task: TaskSpec, alias: str = CHAMPION):
    """The model version behind an alias, or None."""
    tracking.configure(settings)
    try:
        return MlflowClient().get_model_version_by_alias(task.model_name, alias)
    except MlflowException:
        return None


def promotion_decision(task: TaskSpec, challenger: GroupMetrics, champion: dict[str, float] | None,
                       champion_version: str | None) -> tuple[bool, str]:
    """Champion moves only if the challenger's pooled external AUROC beats it by the margin and its
    calibration error is not worse than the champion's by more than the allowed increase."""
    if champion is None:
        return True, f"promoted: no champion before; {PRIMARY_METRIC} {challenger.auroc:.4f}"
    best, best_ece = champion.get(PRIMARY_METRIC, float("-inf")), champion.get(CALIBRATION_METRIC, float("inf"))
    if not challenger.auroc > best + task.promotion.margin:
        return False, (f"kept champion v{champion_version}: {PRIMARY_METRIC} {challenger.auroc:.4f} does not beat "
                       f"{best:.4f} + margin {task.promotion.margin}")
    if not challenger.ece <= best_ece + task.promotion.max_ece_increase:
        return False, (f"kept champion v{champion_version}: {CALIBRATION_METRIC} {challenger.ece:.4f} > "
                       f"{best_ece:.4f} + {task.promotion.max_ece_increase}")
    return True, (f"promoted over v{champion_version}: {PRIMARY_METRIC} {challenger.auroc:.4f} > {best:.4f} + "
                  f"margin {task.promotion.margin}, {CALIBRATION_METRIC} {challenger.ece:.4f} <= {best_ece:.4f} + "
                  f"{task.promotion.max_ece_increase}")


def promote(task: TaskSpec, version: str, metrics: GroupMetrics) -> tuple[bool, str]:
    """Alias the new version `challenger`; move `champion` to it if promotion_decision says so."""
    client = MlflowClient()
    client.set_registered_model_alias(task.model_name, CHALLENGER, version)
    try:
        champion = client.get_model_version_by_alias(task.model_name, CHAMPION)
    except MlflowException:
        champion = None
    champion_metrics = client.get_run(champion.run_id).data.metrics if champion is not None else None
    promoted, decision = promotion_decision(task, metrics, champion_metrics,
                                            champion.version if champion is not None else None)
    if promoted:
        client.set_registered_model_alias(task.model_name, CHAMPION, version)
    client.set_model_version_tag(task.model_name, version, "promotion", decision)
    return promoted, decision
