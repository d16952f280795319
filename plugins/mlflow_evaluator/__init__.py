"""MLflow evaluator plugin ``infgate`` (entry point group ``mlflow.model_evaluator``).

``mlflow.models.evaluate(model_uri, data, targets="label", model_type="classifier",
evaluators=["infgate"])`` scans the evaluation data for label errors with the model's own
influence functions and logs the scan's metrics (``infgate_suspect_rate`` ...) and
artifacts (findings table, plots, gate verdict) to the evaluation run.
"""

from infgate.plugins.mlflow_evaluator.evaluator import InfgateEvaluator

__all__ = ["InfgateEvaluator"]
