"""Risk-model metrics in Spark against sklearn and numpy, on one rich scored frame evaluated once."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from lakehouse.ml.evaluation import GROUP, LABEL, PROB, evaluate, plot

BINS = 10
JOB_GROUP = "test-evaluation"


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def scored_frame(seed: int = 20240611) -> pd.DataFrame:
    """Four groups: calibrated, miscalibrated (true slope 0.6, shifted), negatives only, p on a 0.1 grid (ties)."""
    rng = np.random.default_rng(seed)
    z_a, z_b, z_tied = rng.normal(0, 1.6, 800), rng.normal(-0.5, 1.4, 800), rng.normal(0, 1.2, 250)
    tied_p = np.clip(np.round(sigmoid(z_tied), 1), 0.0, 1.0)
    parts = [
        ("a", rng.binomial(1, sigmoid(z_a)), sigmoid(z_a)),
        ("b", rng.binomial(1, sigmoid(0.4 + 0.6 * z_b)), sigmoid(z_b)),
        ("one_class", np.zeros(150, dtype=int), rng.uniform(0, 0.6, 150)),
        ("tied", rng.binomial(1, sigmoid(0.8 * z_tied)), tied_p),
    ]
    return pd.concat([pd.DataFrame({GROUP: name, LABEL: y.astype(int), PROB: p}) for name, y, p in parts],
                     ignore_index=True)


def logit(p: np.ndarray) -> np.ndarray:
    clipped = np.clip(p, 1e-12, 1 - 1e-12)
    return np.log(clipped / (1 - clipped))


def intercept_with_offset(y: np.ndarray, offset: np.ndarray) -> float:
    """Calibration-in-the-large: a in y ~ a + offset(logit p), by a plain numpy Newton fit."""
    a = 0.0
    for _ in range(100):
        mu = sigmoid(a + offset)
        step = np.sum(y - mu) / np.sum(mu * (1 - mu))
        a += step
        if abs(step) < 1e-12:
            break
    return a


def slope(y: np.ndarray, x: np.ndarray) -> float:
    model = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(x.reshape(-1, 1), y)
    return float(model.coef_[0, 0])


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = BINS) -> float:
    index = np.minimum(np.floor(p * bins), bins - 1).astype(int)
    return sum(np.sum(index == b) / len(p) * abs(p[index == b].mean() - y[index == b].mean())
               for b in range(bins) if np.any(index == b))


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return scored_frame()


@pytest.fixture(scope="module")
def evaluated(spark, frame):
    """evaluate() once, with the Spark jobs it ran and the persisted RDDs it left behind.

    Two rows without a label or a p ride along: they belong to neither class and must not be counted.
    """
    rows = [*frame.itertuples(index=False, name=None), ("a", None, 0.5), ("b", 1, None)]
    scored = spark.createDataFrame(rows, f"{GROUP} STRING, {LABEL} INT, {PROB} DOUBLE")
    context = spark.sparkContext
    persisted_before = context._jsc.sc().getPersistentRDDs().size()
    context.setJobGroup(JOB_GROUP, "evaluate under test")
    try:
        metrics = evaluate(scored, bins=BINS)
    finally:
        context.setLocalProperty("spark.jobGroup.id", None)
    jobs = context.statusTracker().getJobIdsForGroup(JOB_GROUP)
    leaked = context._jsc.sc().getPersistentRDDs().size() - persisted_before
    return metrics, jobs, leaked


@pytest.mark.parametrize("group", ["a", "b", "tied"])
def test_metrics_match_sklearn_and_numpy(evaluated, frame, group):
    metrics = evaluated[0][group]
    rows = frame[frame[GROUP] == group]
    y, p = rows[LABEL].to_numpy(), rows[PROB].to_numpy()
    assert (metrics.n, metrics.positives) == (len(rows), int(y.sum()))
    assert metrics.auroc == pytest.approx(roc_auc_score(y, p), abs=1e-3)
    assert metrics.auprc == pytest.approx(average_precision_score(y, p), abs=1e-3)
    assert metrics.brier == pytest.approx(brier_score_loss(y, p), abs=1e-3)
    assert metrics.ece == pytest.approx(expected_calibration_error(y, p), abs=1e-9)
    assert metrics.calibration_slope == pytest.approx(slope(y, logit(p)), abs=1e-4)
    assert metrics.calibration_intercept == pytest.approx(intercept_with_offset(y, logit(p)), abs=1e-4)
    assert metrics.as_dict().keys() == {"n", "positives", "auroc", "auprc", "brier", "calibration_slope",
                                        "calibration_intercept", "ece"}


def test_calibration_separates_the_calibrated_group_from_the_miscalibrated_one(evaluated):
    metrics = evaluated[0]
    assert abs(metrics["a"].calibration_slope - 1) < 0.2 and abs(metrics["a"].calibration_intercept) < 0.2
    assert metrics["b"].calibration_slope < 0.8 and metrics["b"].calibration_intercept > 0.1


def test_a_one_class_group_gets_nan_and_the_others_are_unaffected(evaluated, frame):
    metrics, _, _ = evaluated
    assert set(metrics) == {"a", "b", "one_class", "tied"}
    one_class = metrics["one_class"]
    assert all(math.isnan(v) for v in (one_class.auroc, one_class.auprc, one_class.calibration_slope,
                                       one_class.calibration_intercept))
    assert one_class.positives == 0 and one_class.curves.roc == [] and one_class.curves.pr == []
    rows = frame[frame[GROUP] == "one_class"]
    assert one_class.brier == pytest.approx(brier_score_loss(rows[LABEL], rows[PROB]), abs=1e-9)
    assert all(not math.isnan(v) for g in ("a", "b", "tied") for v in metrics[g].as_dict().values())


def test_curves_are_small_and_run_from_corner_to_corner(evaluated):
    curves = evaluated[0]["a"].curves
    assert curves.roc[0] == (0.0, 0.0) and curves.roc[-1] == pytest.approx((1.0, 1.0))
    assert 10 < len(curves.roc) <= 201 and len(curves.pr) == len(curves.roc)
    assert curves.pr[-1][0] == pytest.approx(1.0)
    assert sum(n for _, _, n in curves.calibration) == 800 and len(curves.calibration) <= BINS


def test_jobs_are_few_and_nothing_stays_persisted(evaluated):
    _, jobs, leaked = evaluated
    assert len(jobs) <= 12, f"{len(jobs)} Spark jobs"
    assert leaked == 0


def test_plot_writes_three_png_files(evaluated, tmp_path):
    paths = plot(evaluated[0], tmp_path / "plots", "test model")
    assert [p.name for p in paths] == ["roc.png", "pr.png", "calibration.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") and p.stat().st_size > 1000 for p in paths)
