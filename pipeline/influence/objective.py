"""Objective adapters: how a model's outputs become a per-example loss.

A user plugs a model in through one small object (the size of torch-influence's
``BaseObjective``): the per-example loss, and a square-root factor of the loss's Hessian
with respect to the outputs, which the Gauss-Newton curvature needs. Gauss-Newton is only
positive semi-definite when the loss is convex in the outputs, which holds for both
objectives shipped here.
"""

from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from infgate.errors import InvalidInputError

__all__ = ["CrossEntropyObjective", "MSEObjective", "Objective", "resolve_objective"]


class Objective(abc.ABC):
    """Per-example loss plus the output-space Hessian factor for Gauss-Newton."""

    name: str = "objective"

    @abc.abstractmethod
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-example loss, shape ``(B,)``, from outputs ``(B, C)`` and targets."""

    def check_targets(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Raise :class:`InvalidInputError` when targets do not fit the outputs."""
        if outputs.shape[0] != targets.shape[0]:
            raise InvalidInputError(
                f"model returned {outputs.shape[0]} outputs for {targets.shape[0]} targets"
            )

    def output_hessian_factor(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``A`` of shape ``(B, K, C)`` with ``A_b^T A_b`` = d^2 loss_b / d outputs_b^2.

        The default differentiates :meth:`loss` twice and takes a symmetric square root;
        subclasses override it with a closed form.
        """

        def one(o: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.loss(o.unsqueeze(0), t.unsqueeze(0)).sum()

        hess = torch.func.vmap(torch.func.hessian(one))(outputs.detach(), targets)
        evals, evecs = torch.linalg.eigh(hess)
        root = evecs * evals.clamp_min(0).sqrt().unsqueeze(-2)
        return root.transpose(-1, -2)

    def expected_gradient_outputs(self, outputs: torch.Tensor) -> torch.Tensor | None:
        """Optional: the output-space distribution for label-free scores (``None`` = none)."""
        return None


class CrossEntropyObjective(Objective):
    """Softmax cross-entropy on logits; targets are class indices."""

    name = "cross_entropy"

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets, reduction="none")

    def check_targets(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        super().check_targets(outputs, targets)
        if outputs.ndim != 2:
            raise InvalidInputError(
                f"cross-entropy needs model outputs of shape (batch, classes), got "
                f"{tuple(outputs.shape)}"
            )
        if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise InvalidInputError(f"labels must be integer class indices, got {targets.dtype}")
        n_classes = outputs.shape[1]
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= n_classes):
            bad = int(targets.max()) if int(targets.max()) >= n_classes else int(targets.min())
            raise InvalidInputError(
                f"labels contain {bad} but the model outputs {n_classes} classes "
                f"(valid labels are 0..{n_classes - 1})"
            )

    def output_hessian_factor(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # diag(p) - p p^T = sum_c p_c (e_c - p)(e_c - p)^T, so row c of A is sqrt(p_c)(e_c - p).
        p = torch.softmax(outputs.detach(), dim=-1)
        eye = torch.eye(p.shape[-1], dtype=p.dtype, device=p.device)
        return p.sqrt().unsqueeze(-1) * (eye.unsqueeze(0) - p.unsqueeze(1))


class MSEObjective(Objective):
    """Half squared error ``0.5 * ||outputs - targets||^2`` per example (regression)."""

    name = "mse"

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        diff = outputs - targets.reshape(outputs.shape).to(outputs.dtype)
        return 0.5 * diff.pow(2).reshape(diff.shape[0], -1).sum(dim=1)

    def check_targets(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        super().check_targets(outputs, targets)
        if targets.numel() != outputs.numel():
            raise InvalidInputError(
                f"targets of shape {tuple(targets.shape)} do not fit outputs {tuple(outputs.shape)}"
            )

    def output_hessian_factor(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        b, c = outputs.shape[0], outputs.reshape(outputs.shape[0], -1).shape[1]
        eye = torch.eye(c, dtype=outputs.dtype, device=outputs.device)
        return eye.expand(b, c, c)


def resolve_objective(loss: Objective | str) -> Objective:
    """``"cross_entropy"`` / ``"mse"`` or an :class:`Objective` instance."""
    if isinstance(loss, Objective):
        return loss
    table: dict[str, type[Objective]] = {
        "cross_entropy": CrossEntropyObjective,
        "mse": MSEObjective,
    }
    if loss not in table:
        raise InvalidInputError(
            f"loss must be an Objective or one of {sorted(table)}, got {loss!r}"
        )
    return table[loss]()
