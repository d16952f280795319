"""Training and evaluation data at the boundary: containers, validation, readers."""

from infgate.data.training import EvalData, TrainingData, flip_labels

__all__ = ["EvalData", "TrainingData", "flip_labels"]
