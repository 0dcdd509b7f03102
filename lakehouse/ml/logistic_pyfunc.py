"""An MLflow 'model from code': logistic regression scored with numpy, no Spark, no lakehouse import.

The training job fits the model on Spark and logs this file with the fitted numbers in
`model_config` (features, imputation means, coefficients, intercept), so the registered model
loads as a plain pyfunc anywhere: batch scoring on executors and `mlflow models serve`.
"""

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


class LogisticRiskModel(PythonModel):
    def load_context(self, context):
        config = context.model_config
        self.features = list(config["features"])
        self.means = np.asarray(config["means"], dtype=float)
        self.coefficients = np.asarray(config["coefficients"], dtype=float)
        self.intercept = float(config["intercept"])

    def predict(self, context, model_input, params=None):
        frame = pd.DataFrame(model_input)[self.features].astype(float)
        values = frame.to_numpy()
        values = np.where(np.isnan(values), self.means, values)
        return 1.0 / (1.0 + np.exp(-(values @ self.coefficients + self.intercept)))


mlflow.models.set_model(LogisticRiskModel())
