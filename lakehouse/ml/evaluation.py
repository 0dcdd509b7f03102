"""Binary-classification metrics for risk models, per group, computed in Spark.

Nothing that grows with the data reaches the driver. One grouped aggregation collects a binned score
distribution per group: at most 30,001 logit bins (the logit of p rounded to 3 decimals) times the few
equal-width probability bins they straddle. AUROC, average precision, Brier, ECE and the curves come from
those bins on the driver. Calibration slope and intercept are fitted by Newton-Raphson, each iteration one
grouped `agg` of gradient and Hessian sums over all groups at once. The fits start from the same fits on the
binned logits (each within 0.0005 of the exact one), done on the driver: from there Newton needs 2-3
exact iterations instead of 5-6. Spark jobs therefore grow with the Newton iterations (a handful)
and never with the number of groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

GROUP, LABEL, PROB = "group", "label", "p"

P_CLIP = 1e-12  # p is clipped to [P_CLIP, 1 - P_CLIP] before the logit, so p = 0 or 1 stays finite
LOGIT_CLIP = 15.0  # the score bins cover logits in [-15, 15] ...
LOGIT_SCALE = 1000  # ... in steps of 0.001: at most 30,001 bins per group, and equal p stays one bin
MAX_NEWTON_STEPS = 25
NEWTON_TOL = 1e-8
MAX_CURVE_POINTS = 201  # curves are thinned to this many points: they are for plots, not for metrics
NAN = float("nan")

# the columns of the prepared frame, and the sums of one Newton iteration
_Y, _X = "_y", "_x"
_SCORE_BIN, _CAL_BIN = "_score_bin", "_cal_bin"
SLOPE_SUMS = ("g_a", "g_b", "h_aa", "h_ab", "h_bb")  # label ~ a + b * logit(p)
OFFSET_SUMS = ("g_0", "h_00")  # label ~ a0 + offset(logit(p))
NEWTON_SUMS = SLOPE_SUMS + OFFSET_SUMS
START = (0.0, 1.0, 0.0)  # (a, b, a0): a perfectly calibrated model, where a fit starts without a better guess


@dataclass(frozen=True)
class Curves:
    roc: list[tuple[float, float]]  # (fpr, tpr) from (0, 0) to (1, 1)
    pr: list[tuple[float, float]]  # (recall, precision), starting at sklearn's (0, 1)
    calibration: list[tuple[float, float, int]]  # (mean predicted, observed rate, n) per non-empty bin


@dataclass(frozen=True)
class GroupMetrics:
    n: int
    positives: int
    auroc: float
    auprc: float
    brier: float
    calibration_slope: float
    calibration_intercept: float
    ece: float
    curves: Curves

    def as_dict(self) -> dict[str, float]:
        """The scalar metrics only, all floats, ready for `mlflow.log_metrics` (after a group prefix)."""
        return {"n": float(self.n), "positives": float(self.positives), "auroc": self.auroc, "auprc": self.auprc,
                "brier": self.brier, "calibration_slope": self.calibration_slope,
                "calibration_intercept": self.calibration_intercept, "ece": self.ece}


@dataclass(frozen=True)
class Bins:
    """One group's collected bins: one entry per (score bin, calibration bin) that holds any row."""

    score_bin: np.ndarray
    cal_bin: np.ndarray
    n: np.ndarray
    positives: np.ndarray
    sum_p: np.ndarray
    sum_squared_error: np.ndarray


def prepare(scored: DataFrame) -> DataFrame:
    """group, label as double, p, and the logit of p clipped away from 0 and 1 (the regressor of both fits).

    A row without a label or a p belongs to neither class, so it is left out rather than counted in n.
    """
    clipped = F.least(F.greatest(F.col(PROB).cast("double"), F.lit(P_CLIP)), F.lit(1.0 - P_CLIP))
    return (scored
            .where(F.col(LABEL).isNotNull() & F.col(PROB).isNotNull())
            .select(F.col(GROUP), F.col(LABEL).cast("double").alias(_Y), F.col(PROB).cast("double").alias(PROB),
                    F.log(clipped / (1.0 - clipped)).alias(_X)))


def score_bin(x: Column) -> Column:
    """The logit clipped to [-15, 15] and rounded to 3 decimals, as an integer number of thousandths."""
    return F.round(F.least(F.greatest(x, F.lit(-LOGIT_CLIP)), F.lit(LOGIT_CLIP)) * LOGIT_SCALE).cast("int")


def calibration_bin(p: Column, bins: int) -> Column:
    """Equal-width probability bins; p = 1 belongs to the last one."""
    return F.least(F.floor(p * bins), F.lit(bins - 1)).cast("int")


def newton_terms(x, y, a, b, a0, exp) -> dict:
    """Per-row gradient and (negated) Hessian terms of both logistic log-likelihoods at (a, b, a0).

    Written once for Spark columns (exp = F.exp) and numpy arrays (exp = np.exp), so the exact fit in Spark
    and its warm start on the binned logits cannot drift apart.
    """
    mu = 1.0 / (1.0 + exp(-(a + b * x)))
    mu0 = 1.0 / (1.0 + exp(-(a0 + x)))
    w, w0 = mu * (1.0 - mu), mu0 * (1.0 - mu0)
    terms = (y - mu, (y - mu) * x, w, w * x, w * x * x, y - mu0, w0)
    return dict(zip(NEWTON_SUMS, terms, strict=True))


def newton_sums(a: Column, b: Column, a0: Column) -> list[Column]:
    """The Newton sums as aggregate expressions over the prepared rows."""
    return [F.sum(term).alias(name) for name, term in newton_terms(F.col(_X), F.col(_Y), a, b, a0, F.exp).items()]


def binned(prepared: DataFrame, bins: int) -> DataFrame:
    """Counts and sums per (group, score bin, calibration bin): bounded by the bins, not by the rows."""
    return (prepared
            .groupBy(F.col(GROUP), score_bin(F.col(_X)).alias(_SCORE_BIN), calibration_bin(F.col(PROB), bins)
                     .alias(_CAL_BIN))
            .agg(F.count(F.lit(1)).alias("n"), F.sum(_Y).alias("positives"), F.sum(PROB).alias("sum_p"),
                 F.sum((F.col(PROB) - F.col(_Y)) ** 2).alias("sum_squared_error")))


def collect_bins(binned_df: DataFrame) -> dict[str, Bins]:
    """One collect of the binned frame, split into numpy arrays per group."""
    rows: dict[str, list] = {}
    for row in binned_df.collect():
        rows.setdefault(row[GROUP], []).append(row)
    return {group: bins_from_rows(group_rows) for group, group_rows in rows.items()}


def bins_from_rows(rows: list) -> Bins:
    def column(name: str, dtype=float) -> np.ndarray:
        return np.array([row[name] for row in rows], dtype=dtype)

    return Bins(column(_SCORE_BIN, np.int64), column(_CAL_BIN, np.int64), column("n"), column("positives"),
                column("sum_p"), column("sum_squared_error"))


def totals_by(key: np.ndarray, *values: np.ndarray) -> tuple[np.ndarray, ...]:
    """The distinct keys in ascending order and each value summed per key."""
    keys, index = np.unique(key, return_inverse=True)
    return keys, *(np.bincount(index, weights=value, minlength=len(keys)) for value in values)


def thin(cumulative_n: np.ndarray, max_points: int = MAX_CURVE_POINTS) -> np.ndarray:
    """Indices of curve points spread evenly over the observations, always keeping the first and the last."""
    targets = np.linspace(cumulative_n[0], cumulative_n[-1], max_points)
    return np.unique(np.searchsorted(cumulative_n, targets, side="left"))


def ranking_metrics(score: np.ndarray, positives: np.ndarray, negatives: np.ndarray,
                    ) -> tuple[float, float, list[tuple[float, float]], list[tuple[float, float]]]:
    """AUROC, average precision and the thinned ROC and PR curves from per-score-bin class counts.

    Walking the bins from the highest score down, each bin is one threshold, so rows tied in a bin move the
    ROC curve diagonally: the trapezoid rule then gives them half credit, exactly as Mann-Whitney does. Average
    precision is sklearn's sum over thresholds of (R_n - R_{n-1}) * P_n. NaN when a class is missing.
    """
    total_pos, total_neg = positives.sum(), negatives.sum()
    if total_pos == 0 or total_neg == 0:
        return NAN, NAN, [], []
    order = np.argsort(-score)
    tp, fp = np.cumsum(positives[order]), np.cumsum(negatives[order])
    tpr, fpr = np.concatenate([[0.0], tp / total_pos]), np.concatenate([[0.0], fp / total_neg])
    precision = tp / (tp + fp)
    auroc = float(np.trapezoid(tpr, fpr))
    auprc = float(np.sum(np.diff(tpr) * precision))
    keep = thin(np.concatenate([[0.0], tp + fp]))
    roc = [(float(fpr[i]), float(tpr[i])) for i in keep]
    recall_pr, precision_pr = np.concatenate([[0.0], tpr[1:]]), np.concatenate([[1.0], precision])
    pr = [(float(recall_pr[i]), float(precision_pr[i])) for i in keep]
    return auroc, auprc, roc, pr


def calibration_table(cal_bin: np.ndarray, n: np.ndarray, positives: np.ndarray, sum_p: np.ndarray,
                      ) -> tuple[float, list[tuple[float, float, int]]]:
    """ECE (sum over bins of n_bin / n * |mean p - observed rate|) and the calibration curve's points."""
    _, counts, pos, predicted = totals_by(cal_bin, n, positives, sum_p)
    ece = float(np.sum(np.abs(predicted - pos)) / counts.sum())
    curve = [(float(s / c), float(k / c), int(c)) for s, k, c in zip(predicted, pos, counts, strict=True)]
    return ece, curve


def slope_step(sums: dict[str, float]) -> np.ndarray | None:
    """The Newton step for (a, b), or None when the Hessian is singular or not finite (b not identified)."""
    hessian = np.array([[sums["h_aa"], sums["h_ab"]], [sums["h_ab"], sums["h_bb"]]])
    gradient = np.array([sums["g_a"], sums["g_b"]])
    if not np.all(np.isfinite(hessian)) or np.linalg.cond(hessian) > 1e12:
        return None
    return np.linalg.solve(hessian, gradient)


def offset_step(sums: dict[str, float]) -> float | None:
    """The Newton step for a0 with the logit as offset, or None when the Hessian vanishes."""
    if not sums["h_00"] > 0:
        return None
    return sums["g_0"] / sums["h_00"]


@dataclass
class Fit:
    """One group's Newton state for both fits: current parameters, and whether each fit is settled."""

    a: float = START[0]
    b: float = START[1]
    a0: float = START[2]
    slope_done: bool = False
    offset_done: bool = False
    slope_failed: bool = False
    offset_failed: bool = False

    @property
    def done(self) -> bool:
        return self.slope_done and self.offset_done

    def advance(self, sums: dict[str, float]) -> None:
        """Take one Newton step in each unsettled fit; a fit settles when its step is below the tolerance."""
        if not self.slope_done:
            step = slope_step(sums)
            if step is None or not np.all(np.isfinite(step)):
                self.slope_done = self.slope_failed = True
            else:
                self.a, self.b = self.a + float(step[0]), self.b + float(step[1])
                self.slope_done = bool(np.max(np.abs(step)) < NEWTON_TOL)
        if not self.offset_done:
            step0 = offset_step(sums)
            if step0 is None or not np.isfinite(step0):
                self.offset_done = self.offset_failed = True
            else:
                self.a0 += step0
                self.offset_done = abs(step0) < NEWTON_TOL

    def result(self) -> tuple[float, float]:
        """(slope, intercept); NaN for a fit that failed or did not converge (its estimate does not exist)."""
        slope = self.b if self.slope_done and not self.slope_failed else NAN
        intercept = self.a0 if self.offset_done and not self.offset_failed else NAN
        return slope, intercept


def parameter(values: dict[str, float]) -> Column:
    """A per-group parameter as a literal map looked up by group: all groups share one aggregation."""
    return F.create_map(*[F.lit(item) for pair in values.items() for item in pair])[F.col(GROUP)]


def newton_iteration(prepared: DataFrame, fits: dict[str, Fit]) -> dict[str, dict[str, float]]:
    """One grouped `agg` of the Newton sums at each unsettled group's current parameters (one Spark job)."""
    active = {group: fit for group, fit in fits.items() if not fit.done}
    a = parameter({group: fit.a for group, fit in active.items()})
    b = parameter({group: fit.b for group, fit in active.items()})
    a0 = parameter({group: fit.a0 for group, fit in active.items()})
    rows = (prepared.where(F.col(GROUP).isin(list(active)))
            .groupBy(GROUP).agg(*newton_sums(a, b, a0)).collect())
    return {row[GROUP]: {name: float(row[name]) for name in NEWTON_SUMS} for row in rows}


def binned_sums(x: np.ndarray, positives: np.ndarray, negatives: np.ndarray, fit: Fit) -> dict[str, float]:
    """The Newton sums over binned rows: each bin is `positives` rows with label 1 and `negatives` with label 0."""
    with np.errstate(over="ignore"):  # exp overflowing to inf gives mu = 0, as in Spark
        ones, zeros = (newton_terms(x, y, fit.a, fit.b, fit.a0, np.exp) for y in (1.0, 0.0))
    return {name: float(np.sum(positives * ones[name] + negatives * zeros[name])) for name in NEWTON_SUMS}


def warm_start(bins: Bins) -> Fit:
    """Both fits on the binned logits, on the driver: a start so close to the exact fit that Spark needs 2-3 steps.

    A fit that fails or does not converge on the bins starts from START instead, and Spark decides.
    """
    x, positives, n = totals_by(bins.score_bin, bins.positives, bins.n)
    x = x / LOGIT_SCALE
    fit = Fit()
    for _ in range(MAX_NEWTON_STEPS):
        fit.advance(binned_sums(x, positives, n - positives, fit))
        if fit.done:
            break
    slope_ok = fit.slope_done and not fit.slope_failed
    offset_ok = fit.offset_done and not fit.offset_failed
    return Fit(a=fit.a if slope_ok else START[0], b=fit.b if slope_ok else START[1],
               a0=fit.a0 if offset_ok else START[2])


def fit_calibration(prepared: DataFrame, starts: dict[str, Fit]) -> dict[str, tuple[float, float]]:
    """Calibration slope and intercept per group by Newton-Raphson in Spark, all groups in one `agg` per step."""
    fits = dict(starts)
    for _ in range(MAX_NEWTON_STEPS):
        if all(fit.done for fit in fits.values()):
            break
        for group, sums in newton_iteration(prepared, fits).items():
            fits[group].advance(sums)
    return {group: fit.result() for group, fit in fits.items()}


def group_metrics(bins: Bins, slope: float, intercept: float) -> GroupMetrics:
    """All metrics of one group from its collected bins and its fitted calibration."""
    n, positives = int(bins.n.sum()), int(round(bins.positives.sum()))
    score, pos, count = totals_by(bins.score_bin, bins.positives, bins.n)
    auroc, auprc, roc, pr = ranking_metrics(score, pos, count - pos)
    ece, calibration = calibration_table(bins.cal_bin, bins.n, bins.positives, bins.sum_p)
    brier = float(bins.sum_squared_error.sum()) / n
    return GroupMetrics(n=n, positives=positives, auroc=auroc, auprc=auprc, brier=brier, calibration_slope=slope,
                        calibration_intercept=intercept, ece=ece, curves=Curves(roc, pr, calibration))


def has_both_classes(bins: Bins) -> bool:
    positives = bins.positives.sum()
    return 0 < positives < bins.n.sum()


def evaluate(scored: DataFrame, bins: int = 10) -> dict[str, GroupMetrics]:
    """scored has columns group (string), label (0/1 int or double), p (double in [0,1]); one GroupMetrics per group.

    Rows with a null label or p are left out. The prepared frame is persisted
    while the Newton iterations re-read it, and unpersisted before returning. A group with one class gets NaN
    for AUROC, AUPRC, calibration slope and intercept; its Brier score, ECE and calibration curve stay defined.
    """
    prepared = prepare(scored).persist()
    try:
        collected = collect_bins(binned(prepared, bins))
        starts = {group: warm_start(group_bins) for group, group_bins in collected.items()
                  if has_both_classes(group_bins)}
        fitted = fit_calibration(prepared, starts)
    finally:
        prepared.unpersist()
    return {group: group_metrics(group_bins, *fitted.get(group, (NAN, NAN)))
            for group, group_bins in sorted(collected.items())}


def plot(metrics: dict[str, GroupMetrics], out_dir: Path, title: str) -> list[Path]:
    """roc.png, pr.png, calibration.png in out_dir (matplotlib Agg backend), one line per group; returns the paths."""
    # only plotting needs matplotlib, so it is imported here; a bare Figure on an Agg canvas leaves pyplot's
    # global backend alone
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir.mkdir(parents=True, exist_ok=True)
    panels = (
        ("roc.png", "ROC", "false positive rate", "true positive rate", lambda c: c.roc, "auroc", [(0, 0), (1, 1)]),
        ("pr.png", "Precision-recall", "recall", "precision", lambda c: c.pr, "auprc", None),
        ("calibration.png", "Calibration", "mean predicted probability", "observed rate",
         lambda c: [(x, y) for x, y, _ in c.calibration], "ece", [(0, 0), (1, 1)]),
    )
    paths = []
    for name, heading, xlabel, ylabel, points_of, metric, diagonal in panels:
        figure = Figure(figsize=(6, 5))
        FigureCanvasAgg(figure)
        axes = figure.subplots()
        if diagonal:
            axes.plot(*zip(*diagonal, strict=True), linestyle=":", color="grey")
        for group, group_metrics_ in metrics.items():
            points = points_of(group_metrics_.curves)
            if points:
                label = f"{group} ({metric} {getattr(group_metrics_, metric):.3f}, n={group_metrics_.n})"
                axes.plot(*zip(*points, strict=True), marker="." if name == "calibration.png" else None, label=label)
        axes.set(title=f"{title}: {heading}", xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02))
        axes.legend(loc="best", fontsize="small")
        path = out_dir / name
        figure.savefig(path, dpi=100)
        paths.append(path)
    return paths
