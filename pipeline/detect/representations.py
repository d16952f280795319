"""Representations for the exactly valid two-sample tests of :mod:`infgate.detect.mismatch`.

Each is a fixed function of one row, chosen without looking at the training data, so a
permutation test on it stays exactly valid when one side is a subsample of the rows the
model trained on:

* :func:`input_features`: float rows flattened; integer rows (token ids) as their bag of
  tokens;
* :func:`random_twin` + :func:`last_linear_inputs`: the penultimate representation of a copy
  of the model's architecture with fresh random weights.

:func:`pooled_standardized` standardizes both samples with pooled statistics (a function of
the pooled multiset, which a permutation leaves unchanged).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from infgate.influence.gradients import model_logits
from torch import nn

__all__ = [
    "TOKEN_BINS",
    "batched_apply",
    "input_features",
    "last_linear_inputs",
    "pooled_standardized",
    "random_twin",
]

#: Bins of the bag-of-tokens representation of integer (token-id) inputs.
TOKEN_BINS = 1024


def input_features(
    x: torch.Tensor, *, pad_token_id: int | None = None, n_inputs: int = 1
) -> np.ndarray:
    """The input representation the feature tests use: float rows flattened; integer rows
    (token ids) as their bag of tokens, the share of each id (``id mod TOKEN_BINS``) among
    the row's tokens, a fixed function of the row alone.

    ``pad_token_id``: padding is not a token (left out of the bag and of the count), so
    the bag does not change with the padded length. ``n_inputs > 1``: rows are
    ``(n_inputs, L)`` stacks (input ids, attention mask...); the bag is of the first."""
    if x.is_floating_point():
        return x.reshape(x.shape[0], -1).double().cpu().numpy()
    if n_inputs > 1 and x.ndim >= 3:
        x = x[:, 0]
    raw = x.reshape(x.shape[0], -1).cpu().long()
    ids = raw % TOKEN_BINS
    weight = torch.ones(ids.shape, dtype=torch.float64)
    if pad_token_id is not None:
        weight = (raw != pad_token_id).double()
    bag = torch.zeros(x.shape[0], TOKEN_BINS, dtype=torch.float64)
    bag.scatter_add_(1, ids, weight)
    return (bag / weight.sum(1, keepdim=True).clamp(min=1.0)).numpy()


def pooled_standardized(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` standardized with the pooled mean and std (a function of the pooled
    multiset, so a permutation test on the result stays exact)."""
    z = np.concatenate([a, b])
    mean, std = z.mean(0), z.std(0) + 1e-8
    return (a - mean) / std, (b - mean) / std


def random_twin(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model``'s architecture with weights drawn afresh from ``seed`` (eval mode).

    Modules with ``reset_parameters`` (Linear, Conv, Embedding, norms) re-initialise the
    PyTorch way, ``MultiheadAttention`` by ``_reset_parameters``; a parameter no reset
    reached is drawn from N(0, 0.02^2). Batch-norm running statistics are reset. Nothing
    depends on the trained weights' values, so the twin is independent of the training data.
    """
    twin = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        before = {n: p.detach().clone() for n, p in twin.named_parameters()}
        for mod in twin.modules():
            reset = getattr(mod, "reset_parameters", None) or getattr(
                mod, "_reset_parameters", None
            )
            if mod is not twin and callable(reset):
                reset()
            stats = getattr(mod, "reset_running_stats", None)
            if callable(stats):
                stats()
        for name, p in twin.named_parameters():
            if torch.equal(p, before[name]):
                p.normal_(0.0, 0.02)
    return twin.eval()


def last_linear_inputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input of the last ``nn.Linear`` the forward pass calls (its logits if none)."""
    seen: list[torch.Tensor] = []
    hooks = [
        m.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        for m in model.modules()
        if isinstance(m, nn.Linear)
    ]
    try:
        out = model_logits(model(x))
    finally:
        for h in hooks:
            h.remove()
    rep = seen[-1] if seen and seen[-1].shape[0] == x.shape[0] else out
    return rep.reshape(x.shape[0], -1)


def batched_apply(
    model: nn.Module,
    x: torch.Tensor,
    fn: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    batch_size: int = 256,
) -> np.ndarray:
    """``fn(model, batch)`` over ``x`` in batches on the model's device (no gradients)."""
    p = next(model.parameters())
    out = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size]
            xb = xb.to(p.device, p.dtype) if xb.is_floating_point() else xb.to(p.device)
            out.append(fn(model, xb).double().cpu())
    return torch.cat(out).numpy()
