"""Training and evaluation data at the boundary: containers, validation, readers."""

from infgate.data.columns import ColumnOptions, ColumnPlan, ModelInputSpec, resolve_columns
from infgate.data.streamed import StreamedTrainingData
from infgate.data.training import EvalData, TrainingData, flip_labels

__all__ = [
    "ColumnOptions",
    "ColumnPlan",
    "EvalData",
    "ModelInputSpec",
    "StreamedTrainingData",
    "TrainingData",
    "flip_labels",
    "resolve_columns",
]
