"""kNN strangeness for split-conformal per-example p-values (no trained outputs needed).

The score of a row is its mean Euclidean distance to the :data:`KNN` nearest rows of a base
half of the reference, in the joint space of several representation blocks (each
standardized by the base half and scaled by ``1 / sqrt(dim)`` so the blocks weigh alike).
The other half of the reference calibrates it; since the score is fitted on the base half
only, calibration and fresh rows are exchangeable under the null and the conformal p-values
are exactly valid (Vovk et al. 2005; Bates et al. 2023).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["KNN", "KnnStrangeness", "knn_score"]

#: Neighbours averaged by the kNN strangeness score.
KNN = 5


def _scale(std: np.ndarray) -> np.ndarray:
    """Per-column scales from standard deviations: a column (nearly) constant on the base
    rows, e.g. a ReLU unit dead on all of them, gets the median scale instead of ~0 (which
    would make any row that activates it infinitely far)."""
    positive = std[std > 0]
    typical = float(np.median(positive)) if len(positive) else 1.0
    return np.where(std > 1e-6 * typical, std, typical)


def knn_score(base: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Mean Euclidean distance of each row of ``z`` to its ``KNN`` nearest rows of ``base``."""
    k = min(KNN, len(base))
    out = np.empty(len(z))
    bb = (base * base).sum(1)
    for s in range(0, len(z), 512):
        zb = z[s : s + 512]
        d = np.maximum((zb * zb).sum(1)[:, None] + bb[None, :] - 2.0 * zb @ base.T, 0.0)
        out[s : s + 512] = np.sqrt(np.partition(d, k - 1, axis=1)[:, :k]).mean(1)
    return out


class KnnStrangeness:
    """The kNN score fitted on a random half of the reference rows.

    Args:
        blocks: the reference rows' representations, one ``(n, d_j)`` array per block, rows
            aligned.
        rng: draws the base / calibration split.

    Attributes:
        base: the base half, embedded.
        cal_scores: the scores of the calibration half (for :func:`conformal_p_values`).
    """

    def __init__(self, blocks: Sequence[np.ndarray], rng: np.random.Generator) -> None:
        half = rng.permutation(len(blocks[0]))
        base, cal = half[: len(half) // 2], half[len(half) // 2 :]
        self._stats = [
            (m[base].mean(0), _scale(m[base].std(0)), np.sqrt(m.shape[1])) for m in blocks
        ]
        self.base = self.embed([m[base] for m in blocks])
        self.cal_scores = knn_score(self.base, self.embed([m[cal] for m in blocks]))

    def embed(self, blocks: Sequence[np.ndarray]) -> np.ndarray:
        """The blocks, each standardized by the base half and scaled by ``1/sqrt(dim)``."""
        return np.concatenate(
            [(m - mu) / sd / w for m, (mu, sd, w) in zip(blocks, self._stats, strict=True)],
            axis=1,
        )

    def score(self, blocks: Sequence[np.ndarray]) -> np.ndarray:
        """Strangeness of new rows (higher = stranger), comparable with ``cal_scores``."""
        return knn_score(self.base, self.embed(blocks))
