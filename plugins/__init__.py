"""Integration surfaces: MLflow webhook receiver, MLflow evaluator plugin, review UI."""
