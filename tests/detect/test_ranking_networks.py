"""The default ranking on networks: the curvature filter evaluated in the linearized model
inside a trust region, checked exactly on softmax regression and against the network's own
outputs on a 1-D CNN with BatchNorm; and the default finds planted flips on that CNN at
least about as well as the in-sample loss and plain self-influence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from infgate.detect import find_label_errors
from infgate.detect.filtered import (
    TRUST_TOLERANCE,
    FilterStep,
    evaluate_filter,
    filter_step,
    filtered_logits_forward,
    filtered_logits_linearized,
    filtered_model,
)
from infgate.detect.label_errors import DEFAULT_METHOD, ranking_scores
from infgate.detect.loo import approximate_loo
from infgate.detect.neighbours import neighbour_disagreement, penultimate_features
from infgate.errors import InvalidInputError
from infgate.examples.models import make_classifier, train_classifier
from infgate.examples.networks import (
    TrainOptions,
    flip_labels,
    make_network,
    train_network,
    wave_sequences,
)
from infgate.influence import InfluenceScorer
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import average_precision_score

#: how far below the free baselines the default may land on one small seeded run (the
#: paired 5-seed comparison is the benchmark's, benchmarks/bench_network_ranking.py).
MARGIN = 0.05


def _tv(p: np.ndarray, q: np.ndarray) -> float:
    return float(0.5 * np.abs(p - q).sum(1).mean())


@pytest.fixture(scope="module")
def cnn() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, np.ndarray, InfluenceScorer]:
    """A small 1-D CNN (conv-BN-ReLU, strided conv, pooling; 788 parameters, exact
    back-end under auto) trained with Adam on noisy waves with 10% flipped labels."""
    x, y = wave_sequences(300, length=32, classes=4, seed=3)
    noisy, mask = flip_labels(y, 0.1, classes=4, seed=3)
    model = make_network("conv1d", seed=3, classes=4, width=8)
    torch.manual_seed(3)
    train_network(model, x, noisy, TrainOptions(epochs=40, lr=1e-2, weight_decay=1e-4, seed=3))
    scorer = InfluenceScorer(model, (x, noisy), damping=1e-4, progress=False, batch_size=128)
    assert scorer.backend.name == "exact"
    return model, x, noisy, mask, scorer


def test_linearized_filter_is_the_forward_filter_on_softmax_regression() -> None:
    d = load_breast_cancer()
    x = torch.as_tensor(((d.data - d.data.mean(0)) / d.data.std(0)).astype(np.float64)[:200])
    y = torch.as_tensor(d.target[:200])
    model = make_classifier(30, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    train_classifier(model, x, y, weight_decay=1e-3)
    scorer = InfluenceScorer(model, (x, y), damping=1e-3, progress=False, batch_size=64)
    # Near-separable data: 0.1 x the mean eigenvalue is below the damping, so ask for more.
    step = filter_step(scorer, strength=1000.0)
    assert float(step.step.norm()) > 1e-2  # the filter really moves the parameters
    fwd = evaluate_filter(scorer, step, mode="forward").probs
    lin = evaluate_filter(scorer, step, mode="linearized").probs
    np.testing.assert_allclose(lin, fwd, rtol=0, atol=1e-10)
    trusted = evaluate_filter(scorer, step)
    assert trusted.step_fraction == 1.0  # linear in theta: the whole step is trusted
    np.testing.assert_allclose(trusted.probs, fwd, rtol=0, atol=1e-10)


def test_trusted_filter_on_a_network_stays_inside_its_trust_region(cnn) -> None:  # type: ignore[no-untyped-def]
    *_, scorer = cnn
    step = filter_step(scorer)
    fm = evaluate_filter(scorer, step)
    t = fm.step_fraction
    assert t == 0.0 or np.log2(t) in {0, -1, -2, -3, -4, -5, -6}
    # At the step taken the linearized outputs are those of the network itself ...
    own = torch.softmax(filtered_logits_forward(scorer, step.theta + t * step.step), 1).numpy()
    assert _tv(fm.probs, own) <= TRUST_TOLERANCE
    assert fm.divergence == pytest.approx(_tv(fm.probs, own), abs=1e-9)
    # ... and twice the step is outside the region (the largest trusted fraction is taken).
    if t < 1.0:
        twice = min(1.0, 2 * t) if t > 0 else 2.0**-6
        theta2 = step.theta + twice * step.step
        own2 = torch.softmax(filtered_logits_forward(scorer, theta2), 1).numpy()
        probs2 = _linearized_at(scorer, step, twice)
        assert _tv(probs2, own2) > TRUST_TOLERANCE
    # The full Newton step run through the network is not what the ranking uses here.
    full = evaluate_filter(scorer, step, mode="forward").probs
    assert _tv(full, fm.probs) > 0.0


def _linearized_at(scorer: InfluenceScorer, step: FilterStep, frac: float) -> np.ndarray:
    z, dz = filtered_logits_linearized(scorer, step.step)
    return torch.softmax(z + frac * dz, 1).numpy()


def test_default_ranking_finds_planted_flips_on_a_cnn(cnn) -> None:  # type: ignore[no-untyped-def]
    model, x, noisy, mask, scorer = cnn
    df = find_label_errors(model, (x, noisy), scorer=scorer, progress=False)
    assert df.attrs["method"] == DEFAULT_METHOD
    rows = df.sort_values("example_id", key=lambda s: s.astype(int))
    score = rows["score"].to_numpy()
    out = approximate_loo(scorer)
    ap = average_precision_score(mask, score)
    ap_loss = average_precision_score(mask, ranking_scores(out, "loss"))
    ap_si = average_precision_score(mask, out.self_influence)
    assert ap >= 3 * mask.mean()  # far above chance
    assert ap >= ap_loss - MARGIN, (ap, ap_loss)
    assert ap >= ap_si - MARGIN, (ap, ap_si)
    # The benchmark scores the default from the same pieces; they must agree.
    fm = filtered_model(scorer)
    nb = neighbour_disagreement(penultimate_features(model, scorer.train), out.labels)
    np.testing.assert_allclose(
        ranking_scores(out, DEFAULT_METHOD, fm.probs, neighbours=nb), score, atol=1e-12
    )


def test_filter_options_are_checked(cnn) -> None:  # type: ignore[no-untyped-def]
    *_, scorer = cnn
    step = filter_step(scorer)
    with pytest.raises(InvalidInputError, match="mode must be"):
        evaluate_filter(scorer, step, mode="sideways")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="tolerance must be"):
        evaluate_filter(scorer, step, tolerance=-0.1)


def test_exported_graph_ranks_like_the_module(cnn) -> None:  # type: ignore[no-untyped-def]
    """What MLflow's pt2 flavour returns (a ``torch.export`` GraphModule) ranks exactly as
    the nn.Module it was exported from: same parameters, buffers (BatchNorm running
    statistics) and eval-mode graph, so the same filtered model and the same scores."""
    model, x, noisy, _, scorer = cnn
    batch = torch.export.Dim("batch", min=1)
    graph = torch.export.export(model, (x[:4],), dynamic_shapes=({0: batch},)).module()
    assert type(graph).__name__ != type(model).__name__
    a = find_label_errors(model, (x, noisy), scorer=scorer, progress=False)
    b = find_label_errors(graph, (x, noisy), damping=1e-4, batch_size=128, progress=False)
    assert b.attrs["filter_step_fraction"] == a.attrs["filter_step_fraction"]
    np.testing.assert_array_equal(b["example_id"].to_numpy(), a["example_id"].to_numpy())
    np.testing.assert_allclose(b["score"].to_numpy(), a["score"].to_numpy(), rtol=0, atol=1e-9)
