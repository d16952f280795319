"""Training examples and groups that drive the loss on mismatched evaluation rows.

Koh & Liang 2017, Sec. 5.3: the influence of each training row on the focus rows' losses,
its mean and mean magnitude, and per group the share of that magnitude versus the share of
the data (``lift``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from infgate.influence import InfluenceScorer

__all__ = ["mismatch_drivers"]


def mismatch_drivers(
    scorer: InfluenceScorer,
    x: torch.Tensor,
    labels: torch.Tensor | None,
    probs: np.ndarray,
    flags: np.ndarray,
    p_values: np.ndarray,
    *,
    train_ids: np.ndarray,
    train_labels: np.ndarray,
    groups: np.ndarray,
    max_drivers: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training examples driving the loss on the focus rows (their label, else prediction).

    Args:
        scorer: the fitted curvature on the training data.
        x: evaluation rows.
        labels: their labels, or ``None`` (then the model's predictions, ``probs.argmax``).
        probs: the model's softmax outputs on ``x``.
        flags: the focus rows (at most the 50 with the smallest ``p_values`` are used).
        p_values: per-row conformal p-values.
        train_ids: training example ids, dataset order.
        train_labels: training labels, dataset order.
        groups: a group per training row.
        max_drivers: rows in the drivers table.

    Returns:
        ``(drivers, driver_groups)``; both empty when no row is in focus.
    """
    if not flags.any():
        return pd.DataFrame(), pd.DataFrame()
    rows = np.flatnonzero(flags)
    rows = rows[np.argsort(p_values[rows], kind="stable")][:50]
    y = labels[rows] if labels is not None else torch.as_tensor(probs[rows].argmax(1))
    vals = scorer.influence((x[rows], y)).values  # (n_train, k)
    mean_inf = vals.mean(axis=1)
    mean_abs = np.abs(vals).mean(axis=1)
    median = float(np.median(mean_abs)) or 1e-300
    order = np.argsort(-mean_abs, kind="stable")[:max_drivers]
    drivers = pd.DataFrame(
        {
            "train_example_id": train_ids[order].astype(str),
            "given_label": train_labels[order],
            "group": groups[order].astype(str),
            "mean_influence": mean_inf[order],
            "mean_abs_influence": mean_abs[order],
            "relative_magnitude": mean_abs[order] / median,
            "role": np.where(mean_inf[order] < 0, "supporting", "opposing"),
        }
    )
    frame = pd.DataFrame({"group": groups.astype(str), "abs": mean_abs})
    agg = frame.groupby("group")["abs"].agg(["sum", "size"])
    table = pd.DataFrame(
        {
            "group": agg.index.astype(str),
            "n_train": agg["size"].to_numpy(),
            "influence_share": agg["sum"].to_numpy() / max(float(agg["sum"].sum()), 1e-300),
            "data_share": agg["size"].to_numpy() / len(frame),
        }
    )
    table["lift"] = table["influence_share"] / table["data_share"]
    return drivers, table.sort_values("lift", ascending=False).reset_index(drop=True)
