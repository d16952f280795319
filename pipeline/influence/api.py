"""Public influence API: ``self_influence``, ``influence`` and the reusable ``InfluenceScorer``."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from infgate.config import InfluenceConfig
from infgate.influence.backends.auto import (
    CurvatureChoice,
    auto_options,
    choose_method,
    curvature_choice,
)
from infgate.influence.backends.base import Backend, get_backend
from infgate.influence.batches import BatchSource, DatasetLike
from infgate.influence.gradients import GradientEngine, ParamSelector, resolve_device
from infgate.influence.objective import Objective, resolve_objective
from torch import nn
from tqdm.auto import tqdm

__all__ = ["InfluenceMatrix", "InfluenceResult", "InfluenceScorer", "influence", "self_influence"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InfluenceResult:
    """Self-influence scores and how they were computed.

    Attributes:
        scores: float64, one per example in dataset order; higher = more suspicious
            (s_i = g_i^T (H + lambda I)^{-1} g_i, never negative).
        method: back-end used.
        damping: lambda actually used.
        n_params: number of selected parameters.
        device: where it ran.
        timings: seconds per stage (``fit``, ``score``, ``total``).
        details: back-end settings (curvature type, ranks, iterations...).
    """

    scores: np.ndarray
    method: str
    damping: float
    n_params: int
    device: str
    timings: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InfluenceMatrix:
    """``values[i, j]`` = I_up,loss(train i -> test j) = -g_j^T (H + lambda I)^{-1} g_i.

    Positive means up-weighting training example i raises test example j's loss (harmful);
    negative means it helps (Koh & Liang 2017, Eq. 2).
    """

    values: np.ndarray
    method: str
    damping: float
    timings: dict[str, float]


class InfluenceScorer:
    """A model plus a fitted curvature back-end, reusable for many queries.

    Fitting the curvature is the expensive, data-wide step; do it once, then ask for
    self-influence, train -> test influence or test-gradient solves as often as needed.

    Args:
        model: the trained network (eval mode if it has dropout/batch-norm).
        train: training data: a torch Dataset of ``(x, y)``, a ``(features, labels)``
            pair, or :class:`~infgate.data.training.TrainingData`.
        method: back-end name (see :func:`infgate.influence.available_backends`), or
            ``"auto"``: exact up to 20k selected parameters, else EK-FAC (rule in
            :mod:`infgate.influence.backends.auto`); what it picked and why is
            ``scorer.choice`` (a :class:`CurvatureChoice`), ``result.details["auto"]`` and
            the log. With ``auto``,
            ``backend_options`` are keyed by back-end name.
        damping: lambda; ``None`` picks the back-end's documented default.
        params: names/modules whose parameters are differentiated (``None`` = all).
        loss: ``"cross_entropy"``, ``"mse"`` or an :class:`Objective`.
        batch_size: examples per streamed batch.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
        progress: show progress bars.
        backend_options: passed to the back-end's constructor.
    """

    def __init__(
        self,
        model: nn.Module,
        train: DatasetLike,
        *,
        method: str = "auto",
        damping: float | None = None,
        params: ParamSelector = None,
        loss: Objective | str = "cross_entropy",
        batch_size: int = 256,
        device: str | torch.device = "auto",
        progress: bool = True,
        backend_options: dict[str, Any] | None = None,
    ) -> None:
        InfluenceConfig(method=method, damping=damping, batch_size=batch_size)  # validates
        t0 = time.perf_counter()
        self.device = resolve_device(device)
        self.objective = resolve_objective(loss)
        self.engine = GradientEngine(model, self.objective, params=params, device=self.device)
        self.batch_size = batch_size
        self.progress = progress
        self.train = self.batches(train, what="train")
        self.train_data = train  # as given, for sharding (infgate.influence.sharding)
        #: ``{"picked": ..., "reason": ...}`` when ``method="auto"`` chose the back-end.
        self.auto: dict[str, str] | None = None
        options = dict(backend_options or {})
        requested, reason = method, None
        if method == "auto":
            method, reason = choose_method(self.engine)
            options = auto_options(method, backend_options)
            self.auto = {"picked": method, "reason": reason}
            log.info("method='auto' picked %r: %s", method, reason)
        self.backend: Backend = get_backend(method, **options)
        self.backend.fit(self.engine, self.train, damping=damping, progress=progress)
        #: What curvature was fitted, why, and what each parameter got (``to_dict()``).
        self.choice: CurvatureChoice = curvature_choice(
            self.engine, self.backend, requested=requested, reason=reason
        )
        self.fit_seconds = time.perf_counter() - t0
        log.info(
            "fitted %s curvature on %d examples, %d params, damping %.3g in %.2fs",
            self.backend.name,
            len(self.train),
            self.engine.n_params,
            self.backend.damping,
            self.fit_seconds,
        )

    def batches(self, data: DatasetLike, *, what: str = "dataset") -> BatchSource:
        """Wrap ``data`` for streaming with this scorer's device, dtype and batch size."""
        return BatchSource(
            data, batch_size=self.batch_size, device=self.device, dtype=self.engine.dtype, what=what
        )

    def self_influence(self, data: DatasetLike | None = None) -> InfluenceResult:
        """Self-influence of every example of ``data`` (default: the training data)."""
        source = self.train if data is None else self.batches(data)
        t0 = time.perf_counter()
        scores = self.backend.self_influence(self.engine, source, progress=self.progress)
        score_s = time.perf_counter() - t0
        return InfluenceResult(
            scores=scores,
            method=self.backend.name,
            damping=self.backend.damping,
            n_params=self.engine.n_params,
            device=str(self.device),
            timings={
                "fit": self.fit_seconds,
                "score": score_s,
                "total": self.fit_seconds + score_s,
            },
            details={
                **self.backend.describe(),
                **({"auto": self.auto} if self.auto else {}),
                "choice": self.choice.to_dict(),
            },
        )

    def gradients(self, data: DatasetLike) -> torch.Tensor:
        """All per-example gradients of ``data`` as ``(n, P)`` (for small query sets only)."""
        source = self.batches(data, what="query")
        return torch.cat([self.engine.per_example_grads(s, x, y) for s, x, y in source])

    def influence(
        self, test: DatasetLike, *, train: DatasetLike | None = None, test_block: int | None = None
    ) -> InfluenceMatrix:
        """``(n_train, n_test)`` matrix of I_up,loss, computed in test blocks.

        Test gradients are solved against the curvature block by block (``test_block``
        columns at a time, default sized to ~64M floats), then each streamed training batch
        gives one row block by a GEMM.
        """
        t0 = time.perf_counter()
        test_src = self.batches(test, what="test")
        train_src = self.train if train is None else self.batches(train, what="train")
        p = self.engine.n_params
        block = test_block or max(1, min(len(test_src), (1 << 26) // max(p, 1)))
        out = np.empty((len(train_src), len(test_src)), dtype=np.float64)
        test_grads: list[torch.Tensor] = []
        col = 0

        def flush(grads: list[torch.Tensor], col0: int) -> None:
            solved = self.backend.solve(torch.cat(grads))  # (b, P)
            bar = tqdm(
                train_src,
                total=train_src.n_batches,
                desc="train->test influence",
                unit="batch",
                disable=not self.progress,
                leave=False,
            )
            for start, x, y in bar:
                g = self.engine.per_example_grads(start, x, y)
                vals = -(g.to(solved.dtype) @ solved.T)
                out[start : start + x.shape[0], col0 : col0 + solved.shape[0]] = (
                    vals.double().cpu().numpy()
                )

        pending = 0
        for start, x, y in test_src:
            test_grads.append(self.engine.per_example_grads(start, x, y))
            pending += x.shape[0]
            if pending >= block:
                flush(test_grads, col)
                col += pending
                test_grads, pending = [], 0
        if test_grads:
            flush(test_grads, col)
        return InfluenceMatrix(
            values=out,
            method=self.backend.name,
            damping=self.backend.damping,
            timings={"fit": self.fit_seconds, "score": time.perf_counter() - t0},
        )


def self_influence(
    model: nn.Module,
    dataset: DatasetLike,
    *,
    method: str = "auto",
    damping: float | None = None,
    params: ParamSelector = None,
    loss: Objective | str = "cross_entropy",
    batch_size: int = 256,
    device: str | torch.device = "auto",
    progress: bool = True,
    backend_options: dict[str, Any] | None = None,
) -> InfluenceResult:
    """Self-influence s_i = g_i^T (H + lambda I)^{-1} g_i of every training example.

    ``H`` is the Gauss-Newton matrix (the Hessian for models linear in the selected
    parameters) of the MEAN training loss over ``dataset``; higher = more suspicious, never
    negative (Koh & Liang 2017, Sec. 5.4).

    Args:
        model: trained ``nn.Module`` (or MLflow pt2 ``GraphModule``), in eval mode.
        dataset: torch Dataset of ``(x, y)``, ``(features, labels)`` tensors, or TrainingData.
        method: curvature back-end; ``"auto"`` (the default) picks exact or EK-FAC from
            the parameter count and the layer kinds (``details["auto"]`` says why);
            ``"exact"`` forms the full matrix; ``"cg"``, ``"lissa"``, ``"arnoldi"``,
            ``"ekfac"``, ``"kfac"``, ``"tracin"`` approximate it.
        damping: lambda; ``None`` = 1e-3 x mean curvature eigenvalue (scale-free). Pass the
            weight decay the model was trained with to get the exact training objective.
        params: parameter names/modules to differentiate (``None`` = all trainable).
        loss: ``"cross_entropy"`` (default), ``"mse"`` or an :class:`Objective` adapter.
        batch_size: examples per streamed batch.
        device: ``"auto"`` uses CUDA when torch sees it.
        progress: show progress bars.
        backend_options: back-end options, e.g. ``{"curvature": "hessian"}``.

    Returns:
        :class:`InfluenceResult` with ``scores`` in dataset order.

    Raises:
        InvalidInputError: empty data, mismatched lengths, labels the model cannot output,
            NaN/inf features or gradients, unknown parameter names.
        ModelStateError: training-mode model with dropout/batch-norm, no parameters selected.
        CurvatureError: damped curvature not positive definite.
    """
    scorer = InfluenceScorer(
        model,
        dataset,
        method=method,
        damping=damping,
        params=params,
        loss=loss,
        batch_size=batch_size,
        device=device,
        progress=progress,
        backend_options=backend_options,
    )
    return scorer.self_influence()


def influence(
    model: nn.Module,
    train: DatasetLike,
    test: DatasetLike,
    *,
    method: str = "auto",
    damping: float | None = None,
    params: ParamSelector = None,
    loss: Objective | str = "cross_entropy",
    batch_size: int = 256,
    device: str | torch.device = "auto",
    progress: bool = True,
    backend_options: dict[str, Any] | None = None,
) -> InfluenceMatrix:
    """The ``(n_train, n_test)`` matrix of I_up,loss(train i -> test j).

    ``values[i, j] = -g_j^T (H + lambda I)^{-1} g_i`` (Koh & Liang 2017, Eq. 2): positive =
    up-weighting training example i raises test example j's loss. Arguments as in
    :func:`self_influence`; the curvature is fitted on ``train``.
    """
    scorer = InfluenceScorer(
        model,
        train,
        method=method,
        damping=damping,
        params=params,
        loss=loss,
        batch_size=batch_size,
        device=device,
        progress=progress,
        backend_options=backend_options,
    )
    return scorer.influence(test)
