"""The influence stage: per-example gradients, curvature back-ends, self- and train->test influence.

Back-ends register with :func:`register_backend`; importing this package registers the
built-in ones.
"""

from infgate.influence import backends as _backends  # noqa: F401  (registers the built-ins)
from infgate.influence.api import (
    InfluenceMatrix,
    InfluenceResult,
    InfluenceScorer,
    influence,
    self_influence,
)
from infgate.influence.backends.auto import CurvatureChoice
from infgate.influence.backends.base import (
    Backend,
    CanFilter,
    CanWhiten,
    available_backends,
    register_backend,
)
from infgate.influence.gradients import GradientEngine
from infgate.influence.inputs import SplitInputs
from infgate.influence.objective import CrossEntropyObjective, MSEObjective, Objective

__all__ = [
    "Backend",
    "CanFilter",
    "CanWhiten",
    "CrossEntropyObjective",
    "CurvatureChoice",
    "GradientEngine",
    "InfluenceMatrix",
    "InfluenceResult",
    "InfluenceScorer",
    "MSEObjective",
    "Objective",
    "SplitInputs",
    "available_backends",
    "influence",
    "register_backend",
    "self_influence",
]
