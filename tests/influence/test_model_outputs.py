"""Models that return more than a logits tensor: a tuple ``(logits, hidden)``, a dict with
``"logits"`` and a Hugging Face-style ``ModelOutput`` (``out.logits``) are scored exactly
like the same network returning the tensor; anything else is refused naming what came back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from infgate.detect import detect_mismatch, find_label_errors
from infgate.errors import InvalidInputError
from infgate.examples.networks import flip_labels
from infgate.influence import InfluenceScorer
from torch import nn


@dataclass
class _Output:
    logits: torch.Tensor
    hidden: torch.Tensor


class _Net(nn.Module):
    def __init__(self, wrap: str) -> None:
        super().__init__()
        self.wrap = wrap
        self.body = nn.Sequential(nn.Linear(6, 16), nn.Tanh())
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> Any:
        h = self.body(x)
        z = self.head(h)
        return {
            "tensor": z,
            "tuple": (z, h),
            "dict": {"hidden": h, "logits": z},
            "model_output": _Output(logits=z, hidden=h),
            "bad_dict": {"scores": z},
            "string": "logits",
        }[self.wrap]


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y


def _trained_state() -> dict[str, torch.Tensor]:
    x, y = _data()
    torch.manual_seed(0)
    model = _Net("tensor")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[:90]), y[:90]).backward()
        opt.step()
    return model.state_dict()


_STATE = _trained_state()


def _net(wrap: str) -> nn.Module:
    model = _Net(wrap)
    model.load_state_dict(_STATE)
    return model.eval()


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return _data()


@pytest.mark.parametrize("wrap", ["tuple", "dict", "model_output"])
@pytest.mark.parametrize("method", ["exact", "ekfac"])
def test_wrapped_logits_score_like_the_tensor(wrap, method, data) -> None:  # type: ignore[no-untyped-def]
    x, y = data
    ref = InfluenceScorer(_net("tensor"), (x, y), method=method, progress=False)
    got = InfluenceScorer(_net(wrap), (x, y), method=method, progress=False)
    np.testing.assert_allclose(
        got.self_influence().scores, ref.self_influence().scores, rtol=1e-10, atol=0
    )


def test_detectors_take_a_dict_output(data) -> None:  # type: ignore[no-untyped-def]
    x, y = data
    noisy, _ = flip_labels(y[:90], 0.1, classes=3, seed=0)
    kw: dict[str, Any] = {"eval_data": (x[90:], y[90:]), "damping": 1e-2, "progress": False}
    ref = find_label_errors(_net("tensor"), (x[:90], noisy), **kw)
    got = find_label_errors(_net("dict"), (x[:90], noisy), **kw)
    np.testing.assert_allclose(got["score"].to_numpy(), ref["score"].to_numpy(), rtol=1e-9)
    assert (got["is_suspect"] == ref["is_suspect"]).all()
    m_ref = detect_mismatch(_net("tensor"), (x[:90], y[:90]), (x[90:], y[90:]), damping=1e-2)
    m_got = detect_mismatch(_net("dict"), (x[:90], y[:90]), (x[90:], y[90:]), damping=1e-2)
    assert m_got.p_value == pytest.approx(m_ref.p_value)


@pytest.mark.parametrize(
    ("wrap", "match"),
    [("bad_dict", r"returned a dict with keys \['scores'\].*'logits'"), ("string", "a str")],
)
def test_other_outputs_are_refused_naming_them(wrap, match, data) -> None:  # type: ignore[no-untyped-def]
    x, y = data
    with pytest.raises(InvalidInputError, match=match):
        InfluenceScorer(_net(wrap), (x, y), method="exact", progress=False)
