"""A regional clinical data lakehouse: bronze -> silver -> gold Delta tables and MLflow risk models."""

__version__ = "0.1.0"
