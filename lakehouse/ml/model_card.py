"""A model card in Markdown, in the spirit of TRIPOD: what the model is for, what it learned from, how it
did on hospitals it never saw, and what it cannot be trusted with."""

from __future__ import annotations

from lakehouse.config import TaskSpec
from lakehouse.io import Written

METRICS = ("n", "positives", "auroc", "auprc", "brier", "calibration_slope", "calibration_intercept", "ece")


def markdown_table(header: list[str], rows: list[list]) -> list[str]:
    """The lines of a Markdown table; a cell's `|` is escaped and a line break becomes a space."""
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
            *["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]]


def describe_index(task: TaskSpec) -> str:
    """The prediction moment in words, e.g. `inpatient admission + 24 h`."""
    return task.index.event.replace("_", " ") + (f" + {task.index.offset_hours} h" if task.index.offset_hours else "")


def describe_outcome(task: TaskSpec) -> str:
    """The outcome in words (see TaskOutcome)."""
    if task.outcome.kind == "admission":
        return f"an inpatient admission within {task.outcome.window_days} days"
    return "death before the index stay ends"


def _metrics_table(metrics: dict, groups: list[str]) -> list[str]:
    rows = []
    for group in groups:
        values = metrics[group].as_dict()
        rows.append([group, *(f"{int(values[m]):,}" if m in ("n", "positives") else f"{values[m]:.3f}"
                              for m in METRICS)])
    return markdown_table(["group", *METRICS], rows)


def model_card(task: TaskSpec, source: Written, counts, folds, reports, best) -> str:
    """Markdown for the registered model (`best`, one of `reports`, each an external validation)."""
    index, outcome = describe_index(task), describe_outcome(task)
    groups = sorted(best.metrics, key=lambda g: (g != "pooled", g))
    excluded = ", ".join(f"{f.held_out}: {f.excluded_persons}" for f in folds if f.excluded_persons)
    lines = [
        f"# Model card: {task.model_name} ({best.spec.type})",
        "",
        "## Intended use",
        f"{task.description}. Predicted at the {index} for adults eligible under `conf/tasks/{task.name}.yaml`; "
        f"the outcome is {outcome}. For risk stratification and research in the region whose data trained it; "
        "not a diagnostic device, and not for a hospital or population unlike the validation sites below.",
        "",
        "## Data",
        f"- Feature table `{source.table}` version {source.version}: {int(counts.n):,} index events with a closed "
        f"outcome window, {int(counts.positives or 0):,} positive.",
        f"- {len(task.features)} features from the patient timeline strictly before the index time "
        f"(feature sets {', '.join(task.feature_sets)}; look-back windows "
        f"{', '.join(w.name for w in task.lookback)}); missing values imputed with training means.",
        f"- Validation: {task.validation.replace('_', ' ')}"
        + (f"; persons left out of a fold's training for having an index event in the held-out hospital: {excluded}"
           if excluded else "") + ".",
        "",
        "## Performance on held-out data (external validation)",
        *_metrics_table(best.metrics, groups),
        "",
        "## Compared models (pooled external validation)",
        *markdown_table(["model", "AUROC", "AUPRC", "Brier", "calibration slope", "ECE"],
                        [[r.spec.type, f"{r.metrics['pooled'].auroc:.3f}", f"{r.metrics['pooled'].auprc:.3f}",
                          f"{r.metrics['pooled'].brier:.4f}", f"{r.metrics['pooled'].calibration_slope:.3f}",
                          f"{r.metrics['pooled'].ece:.4f}"] for r in reports]),
        "",
        "## Most important features",
        *[f"- {name}: {value:.3f}" for name, value in list(best.importance.items())[:15]],
        "",
        "## Limitations",
        "- Trained and validated on this region's hospitals only; a new hospital needs its own validation.",
        "- Outcomes outside the region's hospitals (an admission elsewhere, a death at home) are not seen: "
        "labels undercount them.",
        "- Subgroups with few positives have wide uncertainty; no confidence intervals are reported.",
        "- The registered model was refitted on every hospital; its reported performance is that of the same "
        "learner trained without the held-out hospital.",
    ]
    return "\n".join(lines) + "\n"
