"""A clean posterior for training rows that no model fitted: the labels of their nearest
LABELLED EVALUATION rows.

The noise model behind the suspect count (:mod:`infgate.detect.calibrate`) needs, for
every training row, what its label should be if that row had not been trained on. For a
model linear in its parameters fitted to its optimum, the influence step gives that
(leave-one-out probabilities, :mod:`infgate.detect.loo`). For a network it does not: the
quadratic model of retraining over- or under-shoots by a factor no label-free rule sizes
(``benchmarks/RESULTS.md``, "Leave-one-out damping on networks"), and the network's own
representation has moved each memorized flip into its given class.

The evaluation rows offer what neither has: rows whose labels are taken as correct and that
no training touched. Each training row's votes among its ``k`` nearest evaluation rows, in
a fixed representation of the inputs (:func:`~infgate.detect.representations.input_features`:
features standardized on the evaluation rows; token ids as their bag of tokens, padding left
out; more than :data:`MAX_DIMS` dimensions reduced by a seeded Gaussian projection), are a
posterior of its clean label that is out-of-sample by construction. The evaluation rows'
own votes, each row left out of its own neighbours, are the same estimator on rows whose
labels are known, so :func:`~infgate.detect.calibrate.fit_noise_model`'s vector-scaling
map is fitted on them exactly as for the model's outputs. Then only the channel ``T`` is
fitted on the training labels. A weak neighbour classifier gives a flatter, still
calibrated, posterior: a wider count, not a biased one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from infgate.detect.representations import input_features
from infgate.errors import InvalidInputError

__all__ = ["MAX_DIMS", "NEIGHBOURS", "EvaluationNeighbours", "NeighbourPosterior"]

#: Evaluation neighbours that vote for each row.
NEIGHBOURS = 10
#: Representations wider than this are projected (Gaussian, seeded) to this many dimensions.
MAX_DIMS = 1024
#: Pseudo-votes per class (Jeffreys-like smoothing: no class gets probability 0).
SMOOTHING = 0.5


class NeighbourPosterior:
    """Votes of the ``k`` nearest labelled evaluation rows, smoothed.

    Args:
        x_eval: the evaluation rows' features (as the model takes them).
        y_eval: their labels, taken as correct.
        n_classes: the model's number of classes.
        k: neighbours per row (at most one fewer than the evaluation rows).
        pad_token_id, n_inputs: how token rows were padded and stacked (the bag of tokens
            leaves padding out and reads the first input).
        seed: seeds the projection of wide representations.
        x_scale: training rows (a sample) whose features, pooled with the evaluation
            rows', set each column's scale. Scaled by the evaluation rows alone, each of
            them would be nearer the centre than a training row (it shaped its own column's
            variance): a bias of order ``1 / m`` in every column, which with many columns
            and few evaluation rows makes the distance test reject a random split (3,000
            columns, 143 evaluation rows: p = 1e-4). Columns constant on the pool keep
            scale 1 (scaled by ``1e-8`` they made a token bin or pixel the evaluation
            rows never use dominate every distance).

    Raises:
        InvalidInputError: fewer than 2 evaluation rows, labels outside the classes.
    """

    def __init__(
        self,
        x_eval: torch.Tensor,
        y_eval: np.ndarray,
        n_classes: int,
        *,
        k: int = NEIGHBOURS,
        pad_token_id: int | None = None,
        n_inputs: int = 1,
        seed: int = 0,
        x_scale: torch.Tensor | None = None,
    ) -> None:
        labels = np.asarray(y_eval, dtype=np.int64).reshape(-1)
        if len(labels) < 2 or len(labels) != x_eval.shape[0]:
            raise InvalidInputError(
                f"neighbour posterior needs >= 2 labelled evaluation rows, got {len(labels)}"
            )
        if labels.min() < 0 or labels.max() >= n_classes:
            raise InvalidInputError(f"evaluation labels outside 0..{n_classes - 1}")
        self.n_classes = int(n_classes)
        self.k = int(min(k, len(labels) - 1))
        self._tokens: dict[str, Any] = {"pad_token_id": pad_token_id, "n_inputs": int(n_inputs)}
        raw = input_features(x_eval.cpu(), **self._tokens)
        pool = raw
        if x_scale is not None and len(x_scale):
            pool = np.concatenate([raw, input_features(x_scale.cpu(), **self._tokens)])
        std = pool.std(0)
        self.mean, self.std = pool.mean(0), np.where(std > 1e-12, std, 1.0)
        self.projection: np.ndarray | None = None
        if raw.shape[1] > MAX_DIMS:
            rng = np.random.default_rng(seed)
            self.projection = rng.normal(size=(raw.shape[1], MAX_DIMS)) / np.sqrt(MAX_DIMS)
        self.reference = torch.as_tensor(self._embed(raw))
        self.labels = torch.as_tensor(labels)

    def _embed(self, raw: np.ndarray) -> np.ndarray:
        z = (raw - self.mean) / self.std
        return z @ self.projection if self.projection is not None else z

    def _votes(
        self, z: torch.Tensor, exclude: torch.Tensor | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Smoothed votes and the mean distance to the ``k`` neighbours."""
        d = torch.cdist(z, self.reference)
        if exclude is not None:  # a reference row is not its own neighbour
            d[torch.arange(len(exclude)), exclude] = torch.inf
        near = torch.topk(d, self.k, dim=1, largest=False)
        votes = torch.nn.functional.one_hot(self.labels[near.indices], self.n_classes).sum(1)
        probs = ((votes.double() + SMOOTHING) / (self.k + SMOOTHING * self.n_classes)).numpy()
        return probs, near.values.mean(1).numpy()

    def probs(self, x: torch.Tensor) -> np.ndarray:
        """``(B, C)`` posterior of rows ``x`` (training rows) from their evaluation neighbours."""
        return self._probs_and_distances(x)[0]

    def _probs_and_distances(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        z = torch.as_tensor(self._embed(input_features(x.cpu(), **self._tokens)))
        return self._votes(z)

    def reference_probs(self, batch: int = 1024) -> np.ndarray:
        """``(m, C)``: each evaluation row's posterior from the OTHER evaluation rows."""
        return self._reference(batch)[0]

    def _reference(self, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        parts, dists = [], []
        for start in range(0, len(self.labels), batch):
            rows = torch.arange(start, min(start + batch, len(self.labels)))
            p, d = self._votes(self.reference[rows], exclude=rows)
            parts.append(p)
            dists.append(d)
        return np.concatenate(parts), np.concatenate(dists)

    def stream(
        self, batches: Iterable[tuple[int, torch.Tensor, torch.Tensor]]
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """Over a scorer's training batches, in dataset order: the training rows'
        posterior, the evaluation rows' left-out posterior, and the p-value of the
        calibration's premise (:meth:`exchangeability_p_value`)."""
        parts, dists = [], []
        for _, x, _ in batches:
            p, d = self._probs_and_distances(x)
            parts.append(p)
            dists.append(d)
        reference, own = self._reference()
        p_value = self.exchangeability_p_value(np.concatenate(dists), own)
        return np.concatenate(parts), reference, p_value

    @staticmethod
    def exchangeability_p_value(
        train_distances: np.ndarray, eval_distances: np.ndarray, *, max_rows: int = 2000
    ) -> float:
        """Do the evaluation rows sit among the training rows as they sit among themselves?
        The map is fitted on evaluation rows' votes from their own set and applied to
        training rows' votes from it: when training rows are farther from the evaluation
        rows (another source, a time split) their votes are weaker than the map assumes and
        the count grows. Mann-Whitney test of the mean neighbour distances (training rows
        subsampled to ``max_rows``, seeded, so its power does not grow with the data)."""
        from scipy.stats import mannwhitneyu

        if len(train_distances) > max_rows:
            rows = np.random.default_rng(0).choice(len(train_distances), max_rows, replace=False)
            train_distances = train_distances[rows]
        result = mannwhitneyu(train_distances, eval_distances, alternative="greater")
        return float(result.pvalue)


@dataclass(frozen=True)
class EvaluationNeighbours:
    """What one scan's labelled evaluation rows say about its training rows.

    Attributes:
        train_votes: ``(n, C)`` each training row's smoothed neighbour votes.
        eval_votes: ``(m, C)`` each evaluation row's votes from the OTHER evaluation rows.
        eval_labels: ``(m,)`` the evaluation labels (taken as correct).
        k: neighbours per row.
        p_value: of the calibration's premise
            (:meth:`NeighbourPosterior.exchangeability_p_value`).
    """

    train_votes: np.ndarray
    eval_votes: np.ndarray
    eval_labels: np.ndarray
    k: int
    p_value: float

    @property
    def accuracy(self) -> float:
        """Share of evaluation rows whose left-out vote names their label."""
        return float((self.eval_votes.argmax(axis=1) == self.eval_labels).mean())

    def calibrated(self, *, bias_penalty: float = 1.0, beta_penalty: float = 1.0) -> np.ndarray:
        """``(n, C)`` the training rows' clean-label posterior: their votes through the
        vector-scaling map fitted on the evaluation rows' left-out votes and labels
        (:func:`~infgate.detect.calibrate.fit_vector_scaling`). A weak neighbour classifier
        gets a small inverse temperature, so a flat posterior."""
        from infgate.detect.calibrate import fit_vector_scaling

        scaling = fit_vector_scaling(
            self.eval_votes, self.eval_labels, bias_penalty=bias_penalty, beta_penalty=beta_penalty
        )
        return scaling.apply(self.train_votes)
