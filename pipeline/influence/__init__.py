"""The influence stage: per-example gradients, curvature back-ends, self- and train->test influence.

Back-ends register with :func:`register_backend`; importing this package registers the
built-in ones.
"""

from pipeline.influence import arnoldi as _arnoldi  # noqa: F401  (registers "arnoldi")
from pipeline.influence import cg as _cg  # noqa: F401  (registers "cg")
from pipeline.influence import ekfac as _ekfac  # noqa: F401  (registers "ekfac", "kfac")
from pipeline.influence import exact as _exact  # noqa: F401  (registers "exact")
from pipeline.influence import lissa as _lissa  # noqa: F401  (registers "lissa")
from pipeline.influence import tracin as _tracin  # noqa: F401  (registers "tracin")
from pipeline.influence.api import (
    InfluenceMatrix,
    InfluenceResult,
    InfluenceScorer,
    influence,
    self_influence,
)
from pipeline.influence.backends import Backend, available_backends, register_backend
from pipeline.influence.gradients import GradientEngine
from pipeline.influence.objective import CrossEntropyObjective, MSEObjective, Objective

__all__ = [
    "Backend",
    "CrossEntropyObjective",
    "GradientEngine",
    "InfluenceMatrix",
    "InfluenceResult",
    "InfluenceScorer",
    "MSEObjective",
    "Objective",
    "available_backends",
    "influence",
    "register_backend",
    "self_influence",
]
