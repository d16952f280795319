"""Models stored in half precision (AMP checkpoints, ``bfloat16`` weights): the influence
maths runs in float32 on the same weights, so the scores are the float32 model's."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from infgate import detect_mismatch, find_label_errors
from infgate.influence import InfluenceScorer
from infgate.registry.datasets import check_data_fits
from torch import nn


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", ["exact", "ekfac"])
def test_half_precision_models_score_like_their_float32_copy(
    dtype: torch.dtype, method: str
) -> None:
    torch.manual_seed(0)
    x = torch.randn(96, 1, 8, 8)
    y = (x.mean((1, 2, 3)) > 0).long()
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2)
    ).eval()
    half = copy.deepcopy(net).to(dtype)
    same = copy.deepcopy(half).float()  # the half model's weights, exactly, in float32
    kw = {"method": method, "damping": 1e-2, "progress": False}
    sc = InfluenceScorer(half, (x, y), **kw)  # type: ignore[arg-type]
    assert sc.engine.dtype == torch.float32
    want = InfluenceScorer(same, (x, y), **kw).self_influence().scores  # type: ignore[arg-type]
    np.testing.assert_allclose(sc.self_influence().scores, want, rtol=1e-6)
    assert check_data_fits(half, x.numpy(), y.numpy()) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an untrained net: the noise model says so
        df = find_label_errors(half, (x, y), eval_data=(x[:40], y[:40]), progress=False)
        assert len(df) == 96 and df["score"].notna().all()
        assert 0.0 <= detect_mismatch(half, (x, y), x[:40] + 1.0).p_value <= 1.0
