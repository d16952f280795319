"""Model outputs and labels drawn from a known posterior, for checking the label-noise
model's count and its interval against the true number of wrong labels."""

from __future__ import annotations

import numpy as np

__all__ = ["draw_noisy_posterior"]


def draw_noisy_posterior(
    n: int, m: int, k: int, rate: float, seed: int, *, sharpen: float = 1.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """``n`` training and ``m`` evaluation rows whose true labels are drawn from a random
    posterior over ``k`` classes; the model's outputs are that posterior over-sharpened
    (``p**sharpen`` renormalised, as an overfitted network's are), and a share ``rate`` of
    the training labels is flipped uniformly to another class.

    Returns:
        ``(training outputs, given training labels, evaluation outputs, clean evaluation
        labels, number of wrong training labels)``.
    """
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n + m, k)) * 2.0
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    true = np.minimum((rng.random(n + m)[:, None] > p.cumsum(1)).sum(1), k - 1)
    sharp = p**sharpen
    sharp /= sharp.sum(1, keepdims=True)
    flip = rng.random(n) < rate
    given = np.where(flip, (true[:n] + rng.integers(1, k, n)) % k, true[:n])
    return sharp[:n], given, sharp[n:], true[n:], int((given != true[:n]).sum())
