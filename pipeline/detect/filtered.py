"""The curvature-filtered model: the fit with the few-example directions taken out.

Self-influence ``s_i = sum_k (v_k^T g_i)^2 / (h_k + lambda)`` (eigenpairs ``(h_k, v_k)`` of the
curvature ``H``) is large exactly for examples that pull on LOW-curvature directions:
directions that only a handful of training examples determine, which is where a model
stores what it memorized, mislabeled examples included. One Newton step of the training
objective towards a stronger ridge penalty ``lambda' > lambda`` (Koh & Liang 2017, Sec. 2.1
applied to the regularizer instead of one example) gives

    theta' = theta - (H + lambda' I)^{-1} (lambda' - lambda) theta
           = (H + lambda' I)^{-1} (H + lambda I) theta,

which keeps each eigen-direction in proportion ``(h_k + lambda) / (h_k + lambda')``: the
well-supported directions are untouched and the memorized ones shrink. Outputs of the
filtered model ``theta'`` are what the model says about an example once nothing it could
only have learned from a few examples is left; a label that disagrees with them is
suspect. ``lambda' = 0.1 x mean eigenvalue of H`` (scale-free; fixed on the development
grid, see :func:`infgate.detect.find_label_errors`). No retraining: one linear solve with
the curvature already fitted, one forward pass.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from infgate.errors import InvalidInputError
from infgate.influence import InfluenceScorer
from infgate.influence.backends.base import CanFilter

__all__ = ["FILTER_STRENGTH", "filter_backend", "filtered_probabilities"]

log = logging.getLogger(__name__)

#: lambda' / mean eigenvalue of H.
FILTER_STRENGTH = 0.1


def filter_backend(scorer: InfluenceScorer) -> CanFilter:
    """The scorer's back-end as :class:`CanFilter`, or a one-line error naming what works."""
    backend = scorer.backend
    if not isinstance(backend, CanFilter):
        raise InvalidInputError(
            f"the curvature-filtered model needs a back-end with a fitted factorisation "
            f"(exact Cholesky or the EK-FAC eigenbasis); {backend.name!r} "
            f"({type(backend).__name__}) has none. Use method='exact', 'ekfac', 'kfac' or "
            f"'auto', or a ranking method that does not start with 'filtered'"
        )
    return backend


def filtered_probabilities(
    scorer: InfluenceScorer, *, strength: float = FILTER_STRENGTH
) -> np.ndarray:
    """Softmax outputs of the curvature-filtered model on the training data, ``(n, C)``.

    The Newton step uses the factorisation the scorer's back-end already fitted (its
    :class:`~infgate.influence.backends.base.CanFilter` capability): no data sweep beyond
    the final forward pass.

    Raises:
        InvalidInputError: ``strength`` is negative, or the back-end cannot filter.
    """
    if not strength >= 0:
        raise InvalidInputError(f"strength must be >= 0, got {strength!r}")
    backend = filter_backend(scorer)
    engine = scorer.engine
    theta = engine.flatten(engine.params).double()
    theta_f, lam_f = backend.filter_parameters(theta, strength)
    log.info("filtered model: lambda' = %.3g (damping %.3g)", lam_f, scorer.backend.damping)
    params = engine.unflatten(theta_f.to(engine.dtype))
    probs = []
    with torch.no_grad():
        for _, x, _ in scorer.train:
            probs.append(torch.softmax(engine.forward(params, x).double(), dim=1).cpu())
    return torch.cat(probs).numpy()
