"""The engine works on the GraphModule that MLflow's default pt2 (torch.export) format loads."""

from __future__ import annotations

import mlflow.pytorch
import numpy as np
import torch
from infgate.influence import self_influence
from torch import nn


def test_pt2_graph_module_matches_original(tmp_path):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, 5, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).eval()
    path = tmp_path / "model"
    mlflow.pytorch.save_model(model, str(path), input_example=x[:2].numpy())
    loaded = mlflow.pytorch.load_model(str(path))
    assert isinstance(loaded, torch.fx.GraphModule)
    ref = self_influence(model, (x, y), damping=0.01, progress=False)
    got = self_influence(loaded, (x, y), damping=0.01, progress=False)
    assert got.n_params == ref.n_params == 5 * 7 + 7 + 7 * 3 + 3
    np.testing.assert_allclose(got.scores, ref.scores, rtol=1e-5)


def test_pt2_graph_module_ekfac_taps_linear_and_conv_calls(tmp_path):
    """Module types are gone in the exported graph: EK-FAC taps its aten.conv2d/linear calls
    and its eval-mode aten.batch_norm (a hooked diagonal block, as the module's BatchNorm2d
    gets), matching the same back-end on the original module."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(48, 64, generator=g)
    y = torch.randint(0, 3, (48,), generator=g)
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(256, 3),
    ).eval()
    path = tmp_path / "cnn"
    mlflow.pytorch.save_model(model, str(path), input_example=x[:2].numpy())
    loaded = mlflow.pytorch.load_model(str(path))
    assert isinstance(loaded, torch.fx.GraphModule)
    kw = {"method": "ekfac", "damping": 0.01, "progress": False}
    ref = self_influence(model, (x, y), **kw)
    got = self_influence(loaded, (x, y), **kw)
    assert [d["layer"] for d in got.details["layers"]] == ["1", "2", "5"]
    assert [d["kind"] for d in got.details["layers"]] == ["conv2d", "norm (diagonal)", "linear"]
    assert [d["param"] for d in got.details["own_block"]] == ["2.weight", "2.bias"]
    assert got.details["own_block_params"] == 0  # no per-example torch.func block
    np.testing.assert_allclose(got.scores, ref.scores, rtol=2e-4)
