"""TracIn back-end: self-influence as gradient norms summed over training checkpoints.

TracIn (Pruthi et al. 2020, Eq. 3 with ``z' = z``) scores an example by how much its own
loss fell each time it was stepped on: ``s_i = sum_c eta_c ||grad loss_i(theta_c)||^2`` over
the checkpoints ``theta_c`` saved during training, ``eta_c`` the learning rate in force.
It needs no curvature (``damping`` does not apply and is reported as 0). With no checkpoints
it is the plain gradient norm ``||g_i||^2`` at the final parameters, the cheap baseline in
BENCHMARKS.md section 2.

For train -> test influence (``solve``) the identity is used at the final parameters,
``-g_test^T g_train`` (TracIn-last).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from infgate.errors import InvalidInputError
from infgate.influence.backends.base import Backend, register_backend
from infgate.influence.batches import BatchSource
from infgate.influence.gradients import GradientEngine
from tqdm.auto import tqdm

__all__ = ["TracInBackend", "load_checkpoint"]

log = logging.getLogger(__name__)

Checkpoint = Mapping[str, torch.Tensor] | str | os.PathLike[str]


def load_checkpoint(source: Checkpoint) -> dict[str, torch.Tensor]:
    """A state dict from a mapping or a ``torch.save`` file (``{"state_dict": ...}`` too)."""
    if isinstance(source, str | os.PathLike):
        if not os.path.exists(source):
            raise InvalidInputError(f"checkpoint file {os.fspath(source)!r} does not exist")
        obj = torch.load(source, map_location="cpu", weights_only=True)
    else:
        obj = source
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InvalidInputError(
            f"a checkpoint must be a state_dict (name -> tensor) or a file holding one; got "
            f"{type(obj).__name__}"
        )
    return dict(obj)


@register_backend("tracin")
class TracInBackend(Backend):
    """Gradient-norm self-influence over checkpoints (TracInCP), or at the final parameters.

    Args:
        checkpoints: state dicts or checkpoint file paths saved during training (loaded one
            at a time); ``None`` = the model's current parameters only.
        learning_rates: ``eta_c``, one per checkpoint or a single value (default 1).
    """

    def __init__(
        self,
        *,
        checkpoints: Sequence[Checkpoint] | None = None,
        learning_rates: float | Sequence[float] | None = None,
    ) -> None:
        self.checkpoints = list(checkpoints) if checkpoints is not None else []
        if checkpoints is not None and not self.checkpoints:
            raise InvalidInputError("checkpoints is an empty list; pass None for plain norms")
        k = max(1, len(self.checkpoints))
        if learning_rates is None:
            rates = [1.0] * k
        elif isinstance(learning_rates, int | float):
            rates = [float(learning_rates)] * k
        else:
            rates = [float(r) for r in learning_rates]
        if len(rates) != k:
            raise InvalidInputError(
                f"learning_rates has {len(rates)} values for {len(self.checkpoints)} checkpoints"
            )
        if any(not np.isfinite(r) or r <= 0 for r in rates):
            raise InvalidInputError(f"learning_rates must be positive and finite, got {rates}")
        self.learning_rates = rates
        self.damping = 0.0

    def fit(
        self, engine: GradientEngine, data: BatchSource, *, damping: float | None, progress: bool
    ) -> None:
        if damping is not None:
            log.info("tracin uses no curvature; damping=%s is ignored", damping)
        expected = set(engine.model.state_dict())
        for i, ckpt in enumerate(self.checkpoints):
            keys = set(load_checkpoint(ckpt))
            if not keys <= expected or not set(engine.names) <= keys:
                missing = sorted(set(engine.names) - keys)[:5]
                extra = sorted(keys - expected)[:5]
                raise InvalidInputError(
                    f"checkpoint {i} does not fit the model: missing {missing}, unexpected {extra}"
                )

    def _engines(self, engine: GradientEngine) -> list[tuple[float, GradientEngine | None]]:
        if not self.checkpoints:
            return [(self.learning_rates[0], engine)]
        return [(r, None) for r in self.learning_rates]

    def _checkpoint_engine(self, engine: GradientEngine, index: int) -> GradientEngine:
        model = copy.deepcopy(engine.model)
        model.load_state_dict(load_checkpoint(self.checkpoints[index]), strict=False)
        model.eval()
        return GradientEngine(
            model, engine.objective, params=engine.names, device=engine.device, dtype=engine.dtype
        )

    def self_influence(
        self, engine: GradientEngine, data: BatchSource, *, progress: bool
    ) -> np.ndarray:
        out = np.zeros(len(data), dtype=np.float64)
        for c, (rate, eng) in enumerate(self._engines(engine)):
            eng = eng or self._checkpoint_engine(engine, c)
            bar = tqdm(
                data,
                total=data.n_batches,
                unit="batch",
                disable=not progress,
                desc=f"tracin checkpoint {c + 1}/{max(1, len(self.checkpoints))}",
                leave=False,
            )
            for start, x, y in bar:
                g = eng.per_example_grads(start, x, y)
                out[start : start + x.shape[0]] += rate * g.double().pow(2).sum(1).cpu().numpy()
        return out

    def quadratic(self, grads: torch.Tensor) -> torch.Tensor:
        return grads.double().pow(2).sum(1)

    def solve(self, grads: torch.Tensor) -> torch.Tensor:
        return grads

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "checkpoints": len(self.checkpoints),
            "learning_rates": list(self.learning_rates),
            "curvature": "none (gradient dot products)",
        }
