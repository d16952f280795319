"""Bad input gets a clear error naming what was wrong."""

from __future__ import annotations

import pytest
import torch
from infgate.errors import (
    CurvatureError,
    DatasetMismatchError,
    InvalidInputError,
    ModelStateError,
    NonFiniteError,
)
from infgate.influence import influence, self_influence
from torch import nn


def _data(n: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def test_mismatched_lengths():
    x, y = _data()
    with pytest.raises(DatasetMismatchError, match="features has 20 rows but labels has 19"):
        self_influence(_model(), (x, y[:19]), progress=False)


def test_labels_out_of_range():
    x, y = _data()
    y[7] = 5
    with pytest.raises(InvalidInputError, match="labels contain 5 but the model outputs 3 classes"):
        self_influence(_model(), (x, y), progress=False)


def test_negative_labels():
    x, y = _data()
    y[2] = -1
    with pytest.raises(InvalidInputError, match="labels contain -1"):
        self_influence(_model(), (x, y), progress=False)


def test_float_labels_rejected():
    x, y = _data()
    with pytest.raises(InvalidInputError, match="integer class indices"):
        self_influence(_model(), (x, y.float()), progress=False)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_features(bad):
    x, y = _data()
    x[11, 2] = bad
    with pytest.raises(NonFiniteError, match=r"NaN or inf features in example\(s\) \[11\]"):
        self_influence(_model(), (x, y), progress=False)


class _SqrtModel(nn.Module):
    """Finite outputs (all zero) whose gradient is NaN: d sqrt(u)/du at u = 0."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(self.lin(x) * 0.0)


def test_non_finite_gradients():
    x, y = _data()
    with pytest.raises(NonFiniteError, match="are NaN or inf for example"):
        self_influence(_SqrtModel().eval(), (x, y), progress=False)


def test_empty_dataset():
    x, y = _data()
    with pytest.raises(InvalidInputError, match="empty"):
        self_influence(_model(), (x[:0], y[:0]), progress=False)


def test_no_trainable_parameters():
    model = _model()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ModelStateError, match="no trainable parameters"):
        self_influence(model, _data(), progress=False)


def test_unknown_parameter_name():
    with pytest.raises(InvalidInputError, match="no parameter named 'fc9'"):
        self_influence(_model(), _data(), params=["fc9"], progress=False)


@pytest.mark.parametrize("layer", [nn.Dropout(0.5), nn.BatchNorm1d(8)])
def test_training_mode_with_stochastic_layers(layer):
    model = nn.Sequential(nn.Linear(4, 8), layer, nn.Linear(8, 3))
    model.train()
    with pytest.raises(ModelStateError, match=r"training mode .* model\.eval\(\)"):
        self_influence(model, _data(), progress=False)
    model.eval()
    assert self_influence(model, _data(), progress=False).scores.shape == (20,)


@pytest.mark.parametrize("damping", [0.0, -1.0, float("nan")])
def test_bad_damping(damping):
    with pytest.raises(InvalidInputError, match="`damping` must be None or positive"):
        self_influence(_model(), _data(), damping=damping, progress=False)


def test_unknown_method():
    with pytest.raises(InvalidInputError, match="method must be one of"):
        self_influence(_model(), _data(), method="magic", progress=False)


def test_indefinite_hessian_names_smallest_eigenvalue():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double().eval()
    x, y = _data(60)
    with pytest.raises(CurvatureError, match=r"smallest eigenvalue is -[\d.e-]+\. Use damping >="):
        self_influence(
            model,
            (x.double(), y),
            method="exact",
            damping=1e-6,
            progress=False,
            backend_options={"curvature": "hessian"},
        )


def test_test_set_checked_too():
    x, y = _data()
    with pytest.raises(DatasetMismatchError, match="test: features has 5 rows but labels has 4"):
        influence(_model(), (x, y), (x[:5], y[:4]), progress=False)


def test_wrong_feature_width_is_reported():
    x, y = _data()
    with pytest.raises(InvalidInputError, match=r"cannot take inputs of shape \(3,\) per example"):
        self_influence(_model(), (x[:, :3], y), progress=False)
