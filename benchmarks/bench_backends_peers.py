"""Peer adapters for benchmarks/bench_backends.py: the same self-influence job in each library.

Every adapter takes the trained model, the training tensors, the damping ``lam`` and the
indices to score, and returns self-influence scores for those indices (their sign and a
global scale may differ by library; the benchmark compares ranks).
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

Adapter = Callable[..., np.ndarray]


def _pydvl() -> Any:
    # pyDVL 0.9.2 (the newest release pip allows next to numpy 2; 0.10 pins numpy<2) still
    # names np.float_, removed in numpy 2.0. Restore the alias before importing it.
    if not hasattr(np, "float_"):
        np.float_ = np.float64  # type: ignore[attr-defined]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pydvl.influence.torch as pt
    return pt


def _pydvl_scores(
    infl: Any, x: torch.Tensor, y: torch.Tensor, idx: np.ndarray, chunk: int = 100
) -> np.ndarray:
    """s_i = g_i^T (H + lam I)^-1 g_i with pyDVL's own factors and gradients."""
    xs, ys = x[idx], y[idx]
    factors = infl.influence_factors(xs, ys)
    out = []
    for s in range(0, len(idx), chunk):
        m = infl.influences_from_factors(
            factors[s : s + chunk], xs[s : s + chunk], ys[s : s + chunk]
        )
        out.append(torch.diagonal(m).detach().cpu().numpy())
    return np.concatenate(out)


def pydvl_run(
    kind: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    lam: float,
    idx: np.ndarray,
    *,
    batch_size: int,
    **opts: Any,
) -> np.ndarray:
    pt = _pydvl()
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size)
    m = copy.deepcopy(model)
    if kind == "direct":
        infl = pt.DirectInfluence(m, F.cross_entropy, hessian_regularization=lam)
    elif kind == "cg":
        infl = pt.CgInfluence(
            m,
            F.cross_entropy,
            hessian_regularization=lam,
            rtol=opts["rtol"],
            atol=0.0,
            maxiter=opts["maxiter"],
            use_block_cg=True,
            warn_on_max_iteration=False,
        )
    elif kind == "lissa":
        infl = pt.LissaInfluence(
            m,
            F.cross_entropy,
            hessian_regularization=lam,
            maxiter=opts["depth"],
            scale=opts["scale"],
            dampen=0.0,
            rtol=1e-12,
            warn_on_max_iteration=False,
        )
    elif kind == "arnoldi":
        infl = pt.ArnoldiInfluence(
            m, F.cross_entropy, hessian_regularization=lam, rank_estimate=opts["rank"]
        )
    elif kind == "ekfac":
        infl = pt.EkfacInfluence(m, hessian_regularization=lam)
    else:
        raise ValueError(kind)
    infl = infl.fit(loader)
    return _pydvl_scores(infl, x, y, idx)


def captum_run(
    kind: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    lam: float,
    idx: np.ndarray,
    *,
    batch_size: int,
    **opts: Any,
) -> np.ndarray:
    from captum.influence import TracInCP
    from captum.influence._core.arnoldi_influence_function import ArnoldiInfluenceFunction
    from captum.influence._core.influence_function import NaiveInfluenceFunction

    n = x.shape[0]
    m = copy.deepcopy(model)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = str(Path(tmp) / "final.pt")
        torch.save(m.state_dict(), ckpt)
        train = TensorDataset(x, y)
        query = (x[idx], y[idx])
        # Captum sums the per-example losses, so its Hessian is n x ours: scale the damping.
        if kind == "naive":
            p = sum(q.numel() for q in m.parameters())
            infl = NaiveInfluenceFunction(
                m,
                train,
                ckpt,
                loss_fn=nn.CrossEntropyLoss(reduction="none"),
                batch_size=batch_size,
                projection_dim=p,
                hessian_reg=lam * n,
                hessian_inverse_tol=0.0,
            )
            return infl.self_influence(query).detach().numpy()
        if kind == "arnoldi":
            infl = ArnoldiInfluenceFunction(
                m,
                train,
                ckpt,
                loss_fn=nn.CrossEntropyLoss(reduction="none"),
                batch_size=batch_size,
                projection_dim=opts["rank"],
                arnoldi_dim=opts["krylov"],
                hessian_reg=lam * n,
            )
            return infl.self_influence(query).detach().numpy()
        if kind == "tracin":
            tr = TracInCP(
                m,
                train,
                [ckpt],
                loss_fn=nn.CrossEntropyLoss(reduction="none"),
                batch_size=batch_size,
            )
            return tr.self_influence(query).detach().numpy()
    raise ValueError(kind)


def kronfluence_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    lam: float,
    idx: np.ndarray,
    *,
    batch_size: int,
    **opts: Any,
) -> np.ndarray:
    import logging

    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    class _Task(Task):
        def compute_train_loss(
            self, batch: Any, model: nn.Module, sample: bool = False
        ) -> torch.Tensor:
            inputs, labels = batch
            logits = model(inputs)
            if not sample:
                return F.cross_entropy(logits, labels, reduction="sum")
            with torch.no_grad():
                sampled = torch.multinomial(torch.softmax(logits.detach(), -1), 1).flatten()
            return F.cross_entropy(logits, sampled, reduction="sum")

        def compute_measurement(self, batch: Any, model: nn.Module) -> torch.Tensor:
            return self.compute_train_loss(batch, model)

    m = prepare_model(copy.deepcopy(model), _Task())
    with tempfile.TemporaryDirectory() as tmp:
        analyzer = Analyzer(
            "bench",
            m,
            _Task(),
            cpu=True,
            disable_tqdm=True,
            output_dir=tmp,
            log_level=logging.ERROR,
        )
        train = TensorDataset(x, y)
        analyzer.fit_all_factors(
            "ekfac",
            train,
            per_device_batch_size=batch_size,
            factor_args=FactorArguments(strategy="ekfac"),
        )
        query = TensorDataset(x[idx], y[idx])
        analyzer.compute_self_scores(
            "self",
            "ekfac",
            query,
            per_device_train_batch_size=batch_size,
            score_args=ScoreArguments(damping_factor=lam),
        )
        scores = analyzer.load_self_scores("self")
        assert scores is not None
        return scores["all_modules"].detach().numpy()
