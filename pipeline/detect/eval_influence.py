"""Each training example's influence on the evaluation loss, from one extra solve.

Koh & Liang (2017, Eq. 2) give the influence of up-weighting training example i on the loss
of a test example j as ``I_up,loss(i, j) = -g_j^T (H + lambda I)^{-1} g_i``. Summed over an
evaluation set it factorizes::

    sum_j I_up,loss(i, j) = -g_i^T (H + lambda I)^{-1} (sum_j g_j) = -g_i^T v,

so ONE solve ``v = (H + lambda I)^{-1} sum_j g_j`` with the curvature already fitted, then
one streamed pass of training gradients, gives the whole vector. Positive = up-weighting
example i raises the evaluation loss (harmful): a training label the evaluation data
contradicts. Reported per evaluation example (the sum divided by ``m``) so its scale does not
depend on the evaluation set's size.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from infgate.detect._inputs import parse_eval
from infgate.errors import InvalidInputError
from infgate.influence import InfluenceScorer

__all__ = ["eval_loss_influence", "eval_probabilities"]

log = logging.getLogger(__name__)


def _parse(scorer: InfluenceScorer, eval_data: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    first = next(iter(scorer.train))
    width = tuple(first[1].shape[1:])
    n_classes = int(scorer.engine.forward(scorer.engine.params, first[1][:1]).shape[-1])
    x, y, _ = parse_eval(eval_data, width=width, n_classes=n_classes)
    return x, y


def eval_probabilities(
    scorer: InfluenceScorer, eval_data: Any
) -> tuple[np.ndarray, np.ndarray] | None:
    """The model's class probabilities on labelled evaluation rows, and their labels.

    What :func:`infgate.detect.calibrate.fit_noise_model` calibrates the clean posterior on
    (``reference=``): out-of-sample outputs with labels taken as correct.

    Args:
        scorer: a fitted :class:`~infgate.influence.InfluenceScorer` (its model, device and
            batch size are used).
        eval_data: ``EvalData``, a ``(features, labels)`` pair, or features alone.

    Returns:
        ``((m, C) float64 probabilities, (m,) int64 labels)``, or ``None`` when the
        evaluation data has no labels.

    Raises:
        InvalidInputError: empty, non-finite or out-of-range evaluation data.
        DatasetMismatchError: evaluation rows of the wrong shape.
    """
    x, y = _parse(scorer, eval_data)
    if y is None:
        return None
    parts = []
    with torch.no_grad():
        for _, xb, _ in scorer.batches((x, y), what="eval"):
            logits = scorer.engine.outputs(xb).double()
            parts.append(torch.softmax(logits, dim=-1).cpu().numpy())
    probs = np.concatenate(parts)
    if not np.isfinite(probs).all():
        raise InvalidInputError("the model's outputs on the evaluation data are not finite")
    return probs, y.cpu().numpy().astype(np.int64)


def eval_loss_influence(scorer: InfluenceScorer, eval_data: Any) -> np.ndarray:
    """``(1/m) sum_j I_up,loss(train i -> eval j)`` for every training example, ``(n,)``.

    Args:
        scorer: a fitted :class:`~infgate.influence.InfluenceScorer` (its curvature and
            damping are reused; nothing is refitted).
        eval_data: labelled evaluation data: ``EvalData`` with labels, or a
            ``(features, labels)`` pair.

    Returns:
        float64 values in training-data order; higher = more harmful to the evaluation loss.

    Raises:
        InvalidInputError: the evaluation data has no labels (the loss needs them), is
            empty, non-finite or holds labels the model cannot output.
        DatasetMismatchError: evaluation rows of the wrong shape.
    """
    x, y = _parse(scorer, eval_data)
    if y is None:
        raise InvalidInputError(
            "eval_data has no labels: the evaluation-loss influence needs them; pass "
            "EvalData with labels or a (features, labels) pair, or leave eval_data=None"
        )
    return _compute_eval_loss_influence(scorer, x, y)


def _compute_eval_loss_influence(
    scorer: InfluenceScorer, x: torch.Tensor, y: torch.Tensor
) -> np.ndarray:
    engine = scorer.engine
    total: torch.Tensor | None = None
    for start, xb, yb in scorer.batches((x, y), what="eval"):
        g = engine.per_example_grads(start, xb, yb).double().sum(0, keepdim=True)
        total = g if total is None else total + g
    assert total is not None  # parse_eval rejects empty evaluation data
    v = scorer.backend.solve((total / x.shape[0]).to(engine.dtype)).double()[0]  # one solve
    out = np.empty(len(scorer.train), dtype=np.float64)
    for start, xb, yb in scorer.train:
        g = engine.per_example_grads(start, xb, yb).double()
        out[start : start + xb.shape[0]] = (-(g @ v)).cpu().numpy()
    log.info("evaluation-loss influence from %d labelled evaluation rows", x.shape[0])
    return out
