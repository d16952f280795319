"""Approximate leave-one-out outputs from the fitted curvature (no retraining).

Removing training example i from the MEAN loss moves the optimum by one Newton step
(Koh & Liang 2017, Sec. 2.1, with epsilon = -1/n)::

    theta_{-i} - theta ~= (1/n) (H - H_i / n)^{-1} g_i,     g_i = J_i^T r_i,

where ``H`` is the damped curvature the back-end fitted, ``J_i`` the Jacobian of example
i's logits, ``r_i = p_i - e_{y_i}`` the cross-entropy residual and ``H_i = J_i^T L_i J_i``
with ``L_i = diag(p_i) - p_i p_i^T`` its own Gauss-Newton term. Removing ``H_i / n`` is the
leverage correction (the multi-output analogue of ``1 / (1 - h_ii)`` in linear regression;
Rad & Maleki 2020, "approximate leave-one-out"). With the output-space leverage matrix
``M_i = J_i H^{-1} J_i^T`` (C x C) the push-through identity gives the logits the model
would give example i had it not been trained on it::

    z_i^{(-i)} ~= z_i + (1/n) M_i (I - L_i M_i / n)^{-1} r_i.

The same pass yields self-influence ``s_i = r_i^T M_i r_i`` (= g_i^T H^{-1} g_i), the
gradient norm and RelatIF's ``||H^{-1} g_i||``, so every ranking in
:mod:`infgate.detect.label_errors` comes from one sweep and one curvature fit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
import torch
from infgate.errors import InvalidInputError
from infgate.influence import InfluenceScorer
from infgate.influence.backends.base import Backend, CanWhiten
from infgate.influence.batches import BatchSource, DatasetLike
from infgate.influence.gradients import GradientEngine
from infgate.influence.sharding import _SCORE_LOCK, FittedCurvature, map_shards
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "LooOutputs",
    "LooShardJob",
    "approximate_loo",
    "leverage_backend",
    "sharded_approximate_loo",
]


@dataclass(frozen=True)
class LooOutputs:
    """Per-example quantities from one sweep over the training data (dataset order).

    Attributes:
        labels: given labels, ``(n,)``.
        probs: in-sample predicted probabilities, ``(n, C)``.
        loo_probs: approximate leave-one-out probabilities, ``(n, C)``.
        self_influence: ``g_i^T (H + lambda I)^{-1} g_i``, ``(n,)``.
        grad_norm: ``||g_i||``, ``(n,)``.
        solved_norm: ``||(H + lambda I)^{-1} g_i||`` (RelatIF's normaliser), ``(n,)``.
        expected_influence: label-free ``E_{y ~ p^{(-i)}}[g_y^T H_{-i}^{-1} g_y]
            = tr(L_i^{(-i)} M_i (I - L_i M_i / n)^{-1})`` at the leave-one-out fit, what the
            mismatch detector's per-example score would be on a fresh example, ``(n,)``.
        leverage: the largest eigenvalue of ``L_i M_i / n``, ``(n,)``. Below 1 whenever the
            curvature is exact (``H - H_i / n`` stays positive definite); 1 or more means the
            fitted curvature under-represents the row's own directions (a factored
            back-end: EK-FAC, K-FAC), where the leverage correction turns the step around and
            the row's leave-one-out probabilities are not to be trusted.
    """

    labels: np.ndarray
    probs: np.ndarray
    loo_probs: np.ndarray
    self_influence: np.ndarray
    grad_norm: np.ndarray
    solved_norm: np.ndarray
    expected_influence: np.ndarray
    leverage: np.ndarray

    @property
    def leverage_violation_rate(self) -> float:
        """Share of rows whose leverage is 1 or more (0.0 with an exact curvature)."""
        return float((self.leverage >= 1.0).mean()) if len(self.leverage) else 0.0

    @classmethod
    def concat(cls, parts: list[LooOutputs]) -> LooOutputs:
        """Join consecutive pieces (batches or shards) in order."""
        if not parts:
            raise InvalidInputError("no examples to compute leave-one-out outputs for")
        return cls(
            **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)}
        )


def _ce_residual(y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``r_i = p_i - e_{y_i}``, the cross-entropy gradient in logit space."""

    def residual(logits: torch.Tensor) -> torch.Tensor:
        r = torch.softmax(logits, dim=1)
        r[torch.arange(r.shape[0]), y] -= 1.0
        return r

    return residual


def leverage_backend(backend: Backend) -> CanWhiten:
    """``backend`` as :class:`CanWhiten`, or a one-line error naming what would work."""
    if not isinstance(backend, CanWhiten):
        raise InvalidInputError(
            f"the leave-one-out sweep needs output-space leverage from a fitted factorisation; "
            f"back-end {backend.name!r} ({type(backend).__name__}) has none (each of its solves "
            f"is an iterative sweep over the data). Use method='exact', 'ekfac', 'kfac', "
            f"'arnoldi' or 'auto'"
        )
    return backend


def _loo_batch(
    engine: GradientEngine,
    backend: Backend,
    n: int,
    start: int,
    x: torch.Tensor,
    y: torch.Tensor,
) -> dict[str, np.ndarray]:
    """Every :class:`LooOutputs` field for one batch; ``n`` = training-set size."""
    piece = leverage_backend(backend).output_leverage(engine, start, x, y, _ce_residual(y))
    logits = piece.logits
    b, c = logits.shape
    p = torch.softmax(logits, dim=1)
    r = _ce_residual(y)(logits)
    lev = 0.5 * (piece.leverage + piece.leverage.transpose(1, 2))
    cov = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)  # L_i
    eye = torch.eye(c, dtype=torch.float64, device=logits.device).expand(b, c, c)
    lm = cov @ lev / n
    # L M / n is similar to the PSD M^{1/2} L M^{1/2} / n: real, non-negative eigenvalues
    # (O(C^3) per row, the order of the solve below)
    top = torch.linalg.eigvals(lm).real.max(dim=1).values.clamp_min(0.0)
    # (I - L M / n)^{-1} r, then M (...) / n
    inner = torch.linalg.solve(eye - lm, r.unsqueeze(2))
    delta = (lev @ inner).squeeze(2) / n
    p_loo = torch.softmax(logits + delta, dim=1)
    cov_loo = torch.diag_embed(p_loo) - p_loo.unsqueeze(2) * p_loo.unsqueeze(1)
    # M_{-i} = J H_{-i}^{-1} J^T = M (I - L M / n)^{-1}; its transpose solves below.
    lev_loo_t = torch.linalg.solve(eye - lev @ cov / n, lev)
    ei = torch.einsum("bcd,bcd->b", cov_loo, lev_loo_t).clamp_min(0.0)
    si = torch.einsum("bc,bcd,bd->b", r, lev, r).clamp_min(0.0)
    return {
        "labels": y.cpu().numpy().astype(np.int64),
        "probs": p.cpu().numpy(),
        "loo_probs": p_loo.cpu().numpy(),
        "self_influence": si.cpu().numpy(),
        "grad_norm": piece.grad_norm.cpu().numpy(),
        "solved_norm": piece.solved_norm.cpu().numpy(),
        "expected_influence": ei.cpu().numpy(),
        "leverage": top.cpu().numpy(),
    }


def _check_objective(scorer: InfluenceScorer) -> None:
    if scorer.objective.name != "cross_entropy":
        raise InvalidInputError(
            f"label-error detection needs a classifier trained with cross-entropy; the "
            f"scorer's objective is {scorer.objective.name!r}"
        )


def _sweep(
    engine: GradientEngine, backend: Backend, n: int, source: BatchSource, bar: bool
) -> LooOutputs:
    # Filled in place: keeping one small array per batch between the batches' large
    # temporaries fragments the heap, and resident memory then grew with n (~40 kB per row
    # with a 2k-parameter exact fit) although nothing but these outputs is kept.
    out: dict[str, np.ndarray] = {}
    rows = 0
    for start, x, y in tqdm(
        source,
        total=source.n_batches,
        desc="leave-one-out outputs",
        unit="batch",
        disable=not bar,
        leave=False,
    ):
        piece = _loo_batch(engine, backend, n, start, x, y)
        if not out:
            total = len(source)
            out = {k: np.empty((total, *v.shape[1:]), dtype=v.dtype) for k, v in piece.items()}
        b = len(piece["labels"])
        for k, v in piece.items():
            out[k][rows : rows + b] = v
        rows += b
    if not out:
        raise InvalidInputError("no examples to compute leave-one-out outputs for")
    return LooOutputs(**{k: v[:rows] for k, v in out.items()})


def approximate_loo(scorer: InfluenceScorer, rows: np.ndarray | None = None) -> LooOutputs:
    """Approximate leave-one-out probabilities (and influence by-products) for ``scorer.train``.

    Args:
        scorer: a fitted :class:`~infgate.influence.InfluenceScorer` with the
            cross-entropy objective.
        rows: training row positions to compute (default: all, in order).

    Returns:
        :class:`LooOutputs` in training-data order.

    Raises:
        InvalidInputError: the scorer's objective is not cross-entropy, or its back-end
            has no fitted factorisation to take leverage from (cg, lissa, tracin).
    """
    _check_objective(scorer)
    leverage_backend(scorer.backend)
    n = len(scorer.train)
    source = scorer.train
    if rows is not None:
        xs, ys = (torch.cat(t) for t in zip(*[(x, y) for _, x, y in scorer.train], strict=True))
        source = scorer.batches((xs[rows], ys[rows]), what="train")
    return _sweep(scorer.engine, scorer.backend, n, source, scorer.progress)


@dataclass(frozen=True)
class LooShardJob:
    """What a worker needs to compute one shard's :class:`LooOutputs`: the fitted curvature
    (engine, back-end, batching) and the training-set size, never the training data."""

    curvature: FittedCurvature
    n_train: int

    def __call__(self, data: DatasetLike, start: int) -> tuple[int, LooOutputs]:
        with _SCORE_LOCK:  # functional_call swaps module parameters: one thread at a time
            source = self.curvature.batches(data, start)
            cur = self.curvature
            return start, _sweep(cur.engine, cur.backend, self.n_train, source, False)


def sharded_approximate_loo(
    scorer: InfluenceScorer,
    *,
    shard_size: int,
    client: Client | None = None,
    threads_per_task: int | None = None,
) -> LooOutputs:
    """:func:`approximate_loo` over every training row, in shards of ``shard_size`` rows.

    The fitted curvature is sent to each Dask worker once; shards are scored where the
    cluster has room and merged in dataset order (equal to the single-process sweep up to
    floating-point summation order). Without a client the shards run here, in order.

    Args:
        scorer: a fitted, cross-entropy :class:`~infgate.influence.InfluenceScorer`.
        shard_size: training rows per shard (one Dask task each).
        client: a ``dask.distributed`` client (e.g. ``distributed.worker_client()`` inside a
            Prefect task on ``DaskTaskRunner``); ``None`` runs the shards in this process.
        threads_per_task: ``torch.set_num_threads`` inside each shard task.
    """
    _check_objective(scorer)
    leverage_backend(scorer.backend)
    curvature = FittedCurvature(scorer.engine, scorer.backend, scorer.batch_size, threads_per_task)
    job = LooShardJob(curvature, len(scorer.train))
    done: dict[int, LooOutputs] = {}
    for start, out in map_shards(
        job,
        scorer.train_data,
        len(scorer.train),
        shard_size=shard_size,
        client=client,
        desc="leave-one-out shards",
        progress=scorer.progress,
    ):
        done[start] = out
    return LooOutputs.concat([done[k] for k in sorted(done)])
