"""Option sets as frozen dataclasses, checked in ``__post_init__``, loggable via ``to_dict``."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from infgate.errors import InvalidInputError

__all__ = ["InfluenceConfig"]


@dataclass(frozen=True)
class InfluenceConfig:
    """How the influence stage runs.

    Attributes:
        method: curvature back-end (``"exact"``, or any registered approximate one).
        damping: lambda added to the curvature; ``None`` = 1e-3 x mean eigenvalue
            (see :func:`infgate.influence.backends.exact.default_damping`).
        batch_size: examples per streamed batch (memory grows with it, not with n).
        device: ``"auto"`` (CUDA when torch sees it), ``"cpu"`` or ``"cuda[:N]"``.
        params: parameter names (or module-name prefixes) to differentiate; ``None`` = all
            trainable parameters.
        loss: ``"cross_entropy"`` or ``"mse"`` (or pass an Objective to the API directly).
        backend_options: extra options for the back-end (e.g. ``curvature="hessian"``).
    """

    method: str = "exact"
    damping: float | None = None
    batch_size: int = 256
    device: str = "auto"
    params: tuple[str, ...] | None = None
    loss: str = "cross_entropy"
    backend_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.damping is not None and not (
            isinstance(self.damping, int | float)
            and math.isfinite(self.damping)
            and self.damping > 0
        ):
            raise InvalidInputError(f"`damping` must be None or positive, got {self.damping!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InvalidInputError(f"`batch_size` must be a positive int, got {self.batch_size!r}")
        if not isinstance(self.method, str) or not self.method:
            raise InvalidInputError(f"`method` must be a back-end name, got {self.method!r}")
        if self.params is not None:
            object.__setattr__(self, "params", tuple(self.params))
        object.__setattr__(self, "backend_options", dict(self.backend_options))

    def to_dict(self) -> dict[str, Any]:
        """Flat, JSON-friendly dict (for MLflow params and the store)."""
        return dataclasses.asdict(self)
