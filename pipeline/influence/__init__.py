"""The influence stage: per-example gradients, curvature back-ends, self- and train->test influence.

Back-ends register with :func:`register_backend`; importing this package registers the
built-in ones.
"""

from pipeline.influence import exact as _exact  # noqa: F401  (registers "exact")
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
