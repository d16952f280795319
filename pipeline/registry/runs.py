"""What a model version's training run logged, read back for the scan (e.g. its weight decay,
the default damping: Koh & Liang's influence is for the regularised training objective)."""

from __future__ import annotations

import logging
import math
from typing import Any

__all__ = ["WEIGHT_DECAY_PARAMS", "logged_weight_decay"]

log = logging.getLogger(__name__)

#: Run params read as the L2 weight decay, in this order (optimizer-style names first).
WEIGHT_DECAY_PARAMS = ("weight_decay", "wd", "l2", "l2_reg", "lambda_l2", "optimizer.weight_decay")


def logged_weight_decay(mv: Any, *, tracking_uri: str | None = None) -> float | None:
    """The weight decay the version's training run logged as a param, or ``None``.

    Looks for :data:`WEIGHT_DECAY_PARAMS` (case-insensitive). A value that is not a
    positive finite number is ignored with a warning naming it.
    """
    from infgate.registry.refs import client
    from mlflow.exceptions import MlflowException

    if not getattr(mv, "run_id", None):
        return None
    try:
        params = client(tracking_uri).get_run(mv.run_id).data.params
    except MlflowException:
        return None
    lowered = {k.lower(): v for k, v in params.items()}
    for key in WEIGHT_DECAY_PARAMS:
        if key in lowered:
            try:
                value = float(lowered[key])
            except ValueError:
                value = float("nan")
            if math.isfinite(value) and value > 0:
                return value
            log.warning("ignoring the run's %s=%r: not a positive number", key, lowered[key])
    return None
