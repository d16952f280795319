"""The report's figures: score distributions on scales that fit them, the recall curve, the
mismatch scores, and small pictures of examples.

Scores that span orders of magnitude (self-influence, mismatch scores: one value near 1e6
flattens a linear axis) are drawn on a log x axis with log-spaced bins; bounded scores stay
linear. Figures use fixed margins and pre-binned stairs (``tight_layout`` and one patch per
bar cost ~0.15 s a figure, a fixed cost of every scan).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from infgate.detect import MismatchReport

__all__ = ["draw_plots", "example_png", "heavy_tailed", "histogram_bins", "recall_curve"]

log = logging.getLogger(__name__)

#: A positive sample whose max / median exceeds this is drawn on a log axis.
HEAVY_TAIL_RATIO = 100.0


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heavy_tailed(values: np.ndarray) -> bool:
    """Whether ``values`` (finite, all > 0) span more than :data:`HEAVY_TAIL_RATIO` from
    median to max, i.e. need a log axis to show more than one bar."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if len(v) < 2 or np.any(v <= 0):
        return False
    return bool(v.max() / np.median(v) > HEAVY_TAIL_RATIO)


def histogram_bins(values: np.ndarray, n: int = 40) -> tuple[np.ndarray, bool]:
    """Bin edges for ``values`` and whether they are log-spaced (see :func:`heavy_tailed`)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if heavy_tailed(v):
        return np.geomspace(v.min(), v.max(), n + 1), True
    if len(v) == 0:
        return np.linspace(0.0, 1.0, n + 1), False
    return np.histogram_bin_edges(v, bins=n), False


def _stairs(ax: Any, groups: list[tuple[np.ndarray, str]], xlabel: str) -> None:
    """A histogram per group on shared bins (log x when the pooled values need it)."""
    pooled = np.concatenate([g for g, _ in groups]) if groups else np.zeros(0)
    bins, log_x = histogram_bins(pooled)
    for values, label in groups:
        v = np.asarray(values, float)
        counts, _ = np.histogram(v[np.isfinite(v)], bins=bins)
        ax.stairs(counts, bins, fill=True, alpha=0.6, label=label)
    if log_x:
        ax.set_xscale("log")
        xlabel += " (log scale)"
    ax.set_xlabel(xlabel)
    ax.set_ylabel("examples")
    ax.set_yscale("log")
    ax.legend(fontsize=8)


def draw_plots(
    directory: Path,
    ranking: pd.DataFrame,
    *,
    error_ids: set[str] | None,
    n_rows: int,
    mismatch: MismatchReport | None,
) -> list[Path]:
    """Write the report's PNG figures into ``directory``; returns their paths.

    ``score_histogram.png``: the ranking score and (when the ranking has it) self-influence,
    suspects against the rest; ``recall_curve.png`` when the true label errors are known
    (``error_ids``); ``mismatch_scores.png`` with evaluation data.
    """

    plt = _pyplot()
    files: list[Path] = []
    sus = ranking["is_suspect"].astype(bool).to_numpy()
    panels = [("score", "ranking score (higher = more likely mislabeled)")]
    if "self_influence" in ranking.columns and ranking["self_influence"].notna().any():
        panels.append(("self_influence", "self-influence g'(H+λI)⁻¹g"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.4), squeeze=False)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.17, top=0.95, wspace=0.25)
    for ax, (column, label) in zip(axes[0], panels, strict=True):
        values = ranking[column].astype(float).to_numpy()
        _stairs(ax, [(values[~sus], "not suspect"), (values[sus], "suspect")], label)
    files.append(directory / "score_histogram.png")
    fig.savefig(files[-1], dpi=90)
    plt.close(fig)
    if error_ids is not None:
        x, y = recall_curve(ranking["example_id"].astype(str).tolist(), error_ids, n_rows)
        fig, ax = plt.subplots(figsize=(5, 3.6))
        fig.subplots_adjust(left=0.14, right=0.96, bottom=0.14, top=0.95)
        ax.plot(x, y, label="infgate ranking")
        ax.plot([0, 1], [0, 1], "--", color="grey", label="random order")
        if sus.any():
            ax.axvline(sus.sum() / max(n_rows, 1), color="tab:red", lw=0.8, label="suspects")
        ax.set_xlim(0, min(1.0, max(float(x.max()), 0.3)))
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("fraction of training data checked (in ranking order)")
        ax.set_ylabel("fraction of label errors found")
        ax.legend(fontsize=8)
        files.append(directory / "recall_curve.png")
        fig.savefig(files[-1], dpi=90)
        plt.close(fig)
    if mismatch is not None and len(mismatch.example_scores):
        scores = np.asarray(mismatch.example_scores, float)
        flagged = np.asarray(mismatch.example_flagged, bool)
        groups = [(scores[~flagged], "not flagged")]
        if flagged.any():
            groups.append((scores[flagged], "flagged"))
        fig, ax = plt.subplots(figsize=(6, 3.4))
        fig.subplots_adjust(left=0.11, right=0.97, bottom=0.17, top=0.9)
        _stairs(ax, groups, "mismatch score per evaluation example")
        ax.set_title(f"train vs eval: dataset-level p = {float(mismatch.p_value):.3g}", fontsize=9)
        files.append(directory / "mismatch_scores.png")
        fig.savefig(files[-1], dpi=90)
        plt.close(fig)
    return files


def example_png(features: np.ndarray, image_shape: tuple[int, ...], *, scale: int = 6) -> bytes:
    """One example as a small grey PNG (dark = high), each pixel ``scale`` pixels wide.

    Raises:
        ValueError: ``features`` cannot be shaped as ``image_shape`` (H, W) or (C, H, W).
    """
    plt = _pyplot()
    shape = tuple(int(s) for s in image_shape)
    img = np.asarray(features, float).reshape(shape)
    if img.ndim == 3:
        img = img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
    lo, hi = float(np.nanmin(img)), float(np.nanmax(img))
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    img = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
    buf = io.BytesIO()
    plt.imsave(buf, img if img.ndim == 3 else 1.0 - img, cmap="gray", vmin=0, vmax=1, format="png")
    return buf.getvalue()


def recall_curve(
    ranking_ids: list[str], error_ids: set[str], n_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of true label errors found after checking the top k examples, k = 0..n.

    Args:
        ranking_ids: example ids, most suspicious first (may cover fewer than ``n_rows``).
        error_ids: ids whose given label is wrong.
        n_rows: dataset size (x axis is k / n_rows).

    Returns:
        ``(fraction checked, fraction of errors found)``.
    """
    hits = np.array([i in error_ids for i in ranking_ids], dtype=float)
    found = np.concatenate([[0.0], np.cumsum(hits)]) / max(len(error_ids), 1)
    checked = np.arange(len(hits) + 1) / max(n_rows, 1)
    return checked, found
