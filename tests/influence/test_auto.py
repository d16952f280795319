"""``method="auto"``: exact when the selected parameters fit, else EK-FAC; says why."""

from __future__ import annotations

import logging

import pytest
import torch
from infgate.errors import InvalidInputError
from infgate.influence import InfluenceScorer, self_influence
from torch import nn

from tests.influence.approx_helpers import default_mlp, one_thread

__all__ = ["one_thread"]


def test_small_model_picks_exact(caplog):
    model, x, y = default_mlp()
    with caplog.at_level(logging.INFO, logger="infgate.influence.api"):
        res = self_influence(model, (x, y), method="auto", damping=0.01, progress=False)
    assert res.method == "exact"
    assert res.details["auto"]["picked"] == "exact"
    assert "212 selected parameters <= 11,180" in res.details["auto"]["reason"]
    assert "method='auto' picked 'exact'" in caplog.text


def test_large_model_picks_ekfac_and_takes_keyed_options(caplog):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 300, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 80), nn.LayerNorm(80), nn.Tanh(), nn.Linear(80, 3))
    model.eval()
    with caplog.at_level(logging.INFO, logger="infgate.influence.api"):
        sc = InfluenceScorer(
            model,
            (x, y),
            method="auto",
            progress=False,
            backend_options={"ekfac": {"fisher": "sampled"}},
        )
    res = sc.self_influence()
    assert res.method == "ekfac" and res.details["fisher"] == "sampled"
    reason = res.details["auto"]["reason"]
    assert "24,483 selected parameters > 11,180" in reason and "1.bias" in reason
    assert [d["param"] for d in res.details["own_block"]] == ["1.weight", "1.bias"]
    choice = sc.choice
    assert choice.method == "ekfac" and choice.requested == "auto"
    assert choice.covered == ("0.weight", "0.bias", "3.weight", "3.bias")
    assert choice.own_block["1.weight"] == "1 (LayerNorm): normalisation scale/shift"
    assert choice.to_dict()["own_block"] == choice.own_block
    assert res.details["choice"]["reason"] == reason
    assert "picked 'ekfac'" in caplog.text
    with pytest.raises(InvalidInputError, match="keyed by back-end name"):
        InfluenceScorer(
            model, (x, y), method="auto", progress=False, backend_options={"fisher": "sampled"}
        )
