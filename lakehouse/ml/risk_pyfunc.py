"""An MLflow 'model from code': a fitted risk model scored with numpy, no Spark, no lakehouse import.

Training fits on Spark and logs this file with the fitted numbers in a JSON `model_config`:
`features`, `means` (imputation of missing values, from the training rows), and either a logistic
model (`coefficients`, `intercept`) or gradient-boosted trees (`trees`: per tree the arrays `feature`,
`threshold`, `left`, `right`, `value`, with -1 children at a leaf; `tree_weights`). Spark's rules are
kept: a value <= threshold goes left, and a boosted margin m gives probability 1 / (1 + exp(-2m)).
The same file serves batch scoring on executors and `mlflow models serve`.
"""

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


def _tree_values(tree: dict, values: np.ndarray) -> np.ndarray:
    feature, threshold = np.asarray(tree["feature"]), np.asarray(tree["threshold"], dtype=float)
    left, right, leaf = np.asarray(tree["left"]), np.asarray(tree["right"]), np.asarray(tree["value"], dtype=float)
    node = np.zeros(len(values), dtype=int)
    rows = np.arange(len(values))
    for _ in range(len(feature)):  # a path is never longer than the tree has nodes
        inner = left[node] >= 0
        if not inner.any():
            break
        goes_left = values[rows, np.maximum(feature[node], 0)] <= threshold[node]
        node = np.where(inner, np.where(goes_left, left[node], right[node]), node)
    return leaf[node]


class RiskModel(PythonModel):
    def load_context(self, context):
        config = context.model_config
        self.features = list(config["features"])
        self.means = np.asarray(config["means"], dtype=float)
        self.config = config

    def predict(self, context, model_input, params=None):
        values = pd.DataFrame(model_input)[self.features].astype(float).to_numpy()
        values = np.where(np.isnan(values), self.means, values)
        if "trees" in self.config:
            margin = sum(w * _tree_values(t, values) for t, w in zip(self.config["trees"],
                                                                    self.config["tree_weights"], strict=True))
            return 1.0 / (1.0 + np.exp(-2.0 * margin))
        logit = values @ np.asarray(self.config["coefficients"], dtype=float) + float(self.config["intercept"])
        return 1.0 / (1.0 + np.exp(-logit))


mlflow.models.set_model(RiskModel())
