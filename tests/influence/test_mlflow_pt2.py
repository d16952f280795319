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
