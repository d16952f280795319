"""Project exceptions. Each subclasses the built-in that fits, so callers may catch either."""

from __future__ import annotations

__all__ = [
    "CurvatureError",
    "DatasetMismatchError",
    "InfgateError",
    "InvalidInputError",
    "ModelStateError",
    "NonFiniteError",
]


class InfgateError(Exception):
    """Base class of every error infgate raises on purpose."""


class InvalidInputError(InfgateError, ValueError):
    """An argument or dataset is malformed (wrong shape, empty, out-of-range labels...)."""


class DatasetMismatchError(InvalidInputError):
    """Two pieces of data that must agree do not (lengths, widths, class sets)."""


class NonFiniteError(InvalidInputError):
    """NaN or inf found in features, model outputs or gradients."""


class ModelStateError(InfgateError, RuntimeError):
    """The model is in a state influence cannot be computed in (training mode, no parameters)."""


class CurvatureError(InfgateError, ArithmeticError):
    """The damped curvature matrix is not positive definite, or a solver diverged."""
