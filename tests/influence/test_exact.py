"""Exact back-end against hand-built curvature matrices, and its invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from infgate.data.training import TrainingData
from infgate.influence import InfluenceScorer, influence, self_influence
from torch import nn

from tests.influence.helpers import (
    RTOL32,
    RTOL64,
    hand_gauss_newton,
    hand_hessian,
    loop_grads,
    quad_scores,
)


@pytest.fixture(scope="module")
def blobs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 6, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 4, (160,), generator=g)
    x = centers[y] + torch.randn(160, 6, generator=g, dtype=torch.float64)
    return x, y


def _softmax_regression(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)  # module init only; data uses its own Generator
    return nn.Linear(6, 4).double().eval()


def _mlp(seed: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)).double().eval()


def test_softmax_regression_matches_hand_built_hessian(blobs):
    x, y = blobs
    model = _softmax_regression()
    ref = quad_scores(loop_grads(model, x, y), hand_hessian(model, x, y), 0.05)
    res = self_influence(model, (x, y), damping=0.05, batch_size=37, progress=False)
    np.testing.assert_allclose(res.scores, ref.numpy(), rtol=RTOL64)
    assert res.method == "exact" and res.damping == 0.05 and res.n_params == 28
    hess = self_influence(
        model,
        (x, y),
        method="exact",
        damping=0.05,
        progress=False,
        backend_options={"curvature": "hessian"},
    )
    np.testing.assert_allclose(hess.scores, ref.numpy(), rtol=RTOL64)


def test_mlp_matches_explicit_gauss_newton(blobs):
    x, y = blobs
    model = _mlp()
    gn = hand_gauss_newton(model, x, y)
    ref = quad_scores(loop_grads(model, x, y), gn, 0.01)
    res = self_influence(model, (x, y), damping=0.01, batch_size=50, progress=False)
    np.testing.assert_allclose(res.scores, ref.numpy(), rtol=RTOL64)
    # The true Hessian of a network differs from Gauss-Newton (and is indefinite here, so
    # it needs more damping); the back-end says which curvature it used.
    full = self_influence(
        model,
        (x, y),
        method="exact",
        damping=3.0,
        progress=False,
        backend_options={"curvature": "hessian"},
    )
    ref_h = quad_scores(loop_grads(model, x, y), hand_hessian(model, x, y), 3.0)
    np.testing.assert_allclose(full.scores, ref_h.numpy(), rtol=RTOL64)
    assert full.details["curvature"] == "hessian" and res.details["curvature"] == "gauss_newton"


def test_parameter_subset_equals_last_layer_regression(blobs):
    x, y = blobs
    model = _mlp()
    with torch.no_grad():
        hidden = model[1](model[0](x))
    head = nn.Linear(5, 4).double().eval()
    head.load_state_dict(model[2].state_dict())
    ref = self_influence(head, (hidden, y), damping=0.02, progress=False).scores
    by_name = self_influence(model, (x, y), params=["2"], damping=0.02, progress=False)
    by_module = self_influence(model, (x, y), params=[model[2]], damping=0.02, progress=False)
    np.testing.assert_allclose(by_name.scores, ref, rtol=RTOL64)
    np.testing.assert_allclose(by_module.scores, ref, rtol=RTOL64)
    assert by_name.n_params == 24


def test_influence_matrix_matches_brute_force(blobs):
    x, y = blobs
    model = _mlp()
    g = loop_grads(model, x, y)
    a = hand_gauss_newton(model, x, y) + 0.01 * torch.eye(g.shape[1], dtype=g.dtype)
    test = (x[:9], y[:9])
    ref = -(g @ torch.linalg.solve(a, g[:9].T))
    mat = influence(model, (x, y), test, damping=0.01, progress=False)
    assert mat.values.shape == (160, 9)
    np.testing.assert_allclose(mat.values, ref.numpy(), rtol=RTOL64, atol=1e-10)
    # Small test blocks give the same matrix; the diagonal is minus self-influence.
    scorer = InfluenceScorer(model, (x, y), damping=0.01, progress=False, batch_size=64)
    blocked = scorer.influence(test, test_block=2)
    np.testing.assert_allclose(blocked.values, mat.values, rtol=RTOL64, atol=1e-10)
    self_s = scorer.self_influence().scores
    np.testing.assert_allclose(-np.diag(mat.values[:9]), self_s[:9], rtol=RTOL64)


def test_scores_nonnegative_and_decrease_with_damping(blobs):
    x, y = blobs
    model = _mlp()
    prev = None
    for damping in (1e-4, 1e-3, 1e-2, 1e-1, 1.0):
        s = self_influence(model, (x, y), damping=damping, progress=False).scores
        assert (s >= 0).all()
        if prev is not None:
            assert (s <= prev * (1 + 1e-12)).all()
            assert (s < prev).mean() > 0.99
        prev = s


def test_invariant_to_batch_size_and_order(blobs):
    x, y = blobs
    model = _mlp()
    base = self_influence(model, (x, y), damping=0.01, batch_size=160, progress=False).scores
    for bs in (1, 7, 64):
        s = self_influence(model, (x, y), damping=0.01, batch_size=bs, progress=False).scores
        np.testing.assert_allclose(s, base, rtol=1e-9)
    perm = torch.randperm(160, generator=torch.Generator().manual_seed(5))
    shuffled = self_influence(model, (x[perm], y[perm]), damping=0.01, progress=False).scores
    np.testing.assert_allclose(shuffled, base[perm.numpy()], rtol=1e-9)


def test_float32_agrees_with_float64(blobs):
    x, y = blobs
    model = _mlp()
    s64 = self_influence(model, (x, y), damping=0.01, progress=False).scores
    model32 = _mlp().float()
    s32 = self_influence(model32, (x.float(), y), damping=0.01, progress=False).scores
    assert s32.dtype == np.float64
    np.testing.assert_allclose(s32, s64, rtol=RTOL32)


def test_default_damping_is_relative_to_curvature(blobs):
    x, y = blobs
    model = _mlp()
    res = self_influence(model, (x, y), progress=False)
    trace = float(torch.trace(hand_gauss_newton(model, x, y)))
    assert res.damping == pytest.approx(1e-3 * trace / res.n_params, rel=1e-9)
    # Scaling the loss scales the curvature and the default damping alike.
    assert res.timings["total"] >= res.timings["fit"] > 0


def test_accepts_dataset_and_training_data(blobs):
    x, y = blobs
    model = _mlp().float()
    xf = x.float()
    base = self_influence(model, (xf, y), damping=0.01, progress=False).scores
    ds = torch.utils.data.TensorDataset(xf, y)
    np.testing.assert_allclose(
        self_influence(model, ds, damping=0.01, batch_size=33, progress=False).scores,
        base,
        rtol=1e-5,
    )
    td = TrainingData(features=xf.numpy(), labels=y.numpy())
    np.testing.assert_allclose(
        self_influence(model, td, damping=0.01, progress=False).scores, base, rtol=1e-5
    )


def test_progress_bar_is_shown(blobs, capsys):
    x, y = blobs
    self_influence(_mlp(), (x, y), damping=0.01, progress=True)
    err = capsys.readouterr().err
    assert "curvature (gauss_newton)" in err and "self-influence (exact)" in err


@pytest.mark.gpu
def test_cuda_matches_cpu(blobs):
    x, y = blobs
    model = _mlp()
    cpu = self_influence(model, (x, y), damping=0.01, device="cpu", progress=False)
    gpu = self_influence(model, (x, y), damping=0.01, device="cuda", progress=False)
    assert gpu.device.startswith("cuda")
    np.testing.assert_allclose(gpu.scores, cpu.scores, rtol=1e-6)
