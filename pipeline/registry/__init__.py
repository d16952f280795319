"""The MLflow model registry: resolve versions, load models (pt2), training datasets,
scan runs, tags and aliases."""

from infgate.registry.core import (
    ModelVersionRef,
    alias_version,
    client,
    load_model,
    log_scan_run,
    resolve_model_version,
    set_alias,
    set_gate_tags,
    withdraw_alias,
)
from infgate.registry.datasets import (
    ResolvedData,
    StreamedData,
    check_data_fits,
    load_eval_data,
    load_training_data,
    stream_training_data,
)
from infgate.registry.inputs import column_options, model_input_spec
from infgate.registry.runs import WEIGHT_DECAY_PARAMS, logged_weight_decay

__all__ = [
    "WEIGHT_DECAY_PARAMS",
    "ModelVersionRef",
    "ResolvedData",
    "StreamedData",
    "alias_version",
    "check_data_fits",
    "client",
    "column_options",
    "load_eval_data",
    "load_model",
    "load_training_data",
    "log_scan_run",
    "logged_weight_decay",
    "model_input_spec",
    "resolve_model_version",
    "set_alias",
    "set_gate_tags",
    "stream_training_data",
    "withdraw_alias",
]
