"""Every exception infgate raises on purpose. Each subclasses the built-in that fits, so
callers may catch either (``except ValueError`` catches every bad-input error)."""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfigError",
    "CurvatureError",
    "DataResolutionError",
    "DatasetMismatchError",
    "GateBlockedError",
    "InfgateError",
    "InfluenceRunError",
    "InvalidInputError",
    "LeaseExpiredError",
    "ModelStateError",
    "NonFiniteError",
    "NotFittedError",
    "NotFoundError",
    "RegistryError",
    "SchemaVersionError",
]


class InfgateError(Exception):
    """Base class of every error infgate raises on purpose."""


class InvalidInputError(InfgateError, ValueError):
    """An argument or dataset is malformed (wrong shape, empty, out-of-range labels...)."""


class ConfigError(InvalidInputError):
    """A configuration value (option, YAML file, environment variable) is invalid."""


class DatasetMismatchError(InvalidInputError):
    """Two pieces of data that must agree do not (lengths, widths, class sets)."""


class NonFiniteError(InvalidInputError):
    """NaN or inf found in features, model outputs or gradients."""


class DataResolutionError(InvalidInputError):
    """No training data could be resolved for a model version, or it could not be read."""


class ModelStateError(InfgateError, RuntimeError):
    """The model is in a state influence cannot be computed in (training mode, no parameters)."""


class NotFittedError(InfgateError, RuntimeError):
    """A curvature back-end was used before ``fit`` (the message names the class and call)."""


class CurvatureError(InfgateError, ArithmeticError):
    """The damped curvature matrix is not positive definite, or a solver diverged."""


class RegistryError(InfgateError, LookupError):
    """An unknown registered model, alias or version."""


class NotFoundError(InfgateError, LookupError):
    """A scan, finding, queue item or annotator id that the store does not have."""


class SchemaVersionError(InfgateError, RuntimeError):
    """The database's schema revision is not this infgate's (run ``infgate db upgrade``)."""


class InfluenceRunError(InfgateError, RuntimeError):
    """The influence-stage deployment run did not complete, or returned something else."""


class GateBlockedError(InvalidInputError):
    """A blocked version was asked to take the deployment alias; ``reasons`` say why."""

    def __init__(self, message: str, reasons: list[Any]) -> None:
        super().__init__(message)
        self.reasons = reasons


class LeaseExpiredError(InfgateError, RuntimeError):
    """A decision arrived for a lease that had expired or passed to someone else.

    The decision is still appended to the audit log (flagged ``lease_expired``) but does not
    count towards the item; ``decision_id`` names the recorded row.
    """

    def __init__(self, message: str, *, decision_id: int) -> None:
        super().__init__(message)
        self.decision_id = decision_id
