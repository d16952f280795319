"""The MLflow model registry: resolve versions, load models (pt2), training datasets,
scan runs, tags and aliases."""

from infgate.registry.core import (
    ModelVersionRef,
    ResolvedData,
    alias_version,
    check_data_fits,
    client,
    load_model,
    load_training_data,
    log_scan_run,
    resolve_model_version,
    set_alias,
    set_gate_tags,
    withdraw_alias,
)

__all__ = [
    "ModelVersionRef",
    "ResolvedData",
    "alias_version",
    "check_data_fits",
    "client",
    "load_model",
    "load_training_data",
    "log_scan_run",
    "resolve_model_version",
    "set_alias",
    "set_gate_tags",
    "withdraw_alias",
]
