"""The MLflow model registry: resolve versions, load models (pt2), training datasets,
scan runs, tags and aliases."""

from infgate.registry.core import (
    alias_version,
    load_model,
    resolve_model_version,
    set_alias,
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
from infgate.registry.refs import ModelVersionRef, client
from infgate.registry.runs import WEIGHT_DECAY_PARAMS, logged_weight_decay
from infgate.registry.scan_run import log_scan_run, set_gate_tags

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
