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


@pytest.mark.parametrize("squeeze", [False, True])
def test_single_logit_binary_model_is_its_logistic_loss(squeeze: bool) -> None:
    """A binary classifier with one logit (``(B, 1)`` or ``(B,)``, trained with
    ``BCEWithLogitsLoss``): infgate scores it as two-class logits ``[0, z]``, whose softmax
    cross-entropy is the logistic loss; exact self-influence equals ``g_i^T (H + lambda
    I)^{-1} g_i`` with the gradients and Hessian of the logistic loss, by hand."""
    from torch.func import grad, hessian, vmap

    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 6, generator=g, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * torch.randn(80, generator=g, dtype=torch.float64) > 0).long()
    lin = nn.Linear(6, 1).double()
    model: nn.Module = nn.Sequential(lin, nn.Flatten(0)) if squeeze else lin
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = lin(x).squeeze(1)
        loss = nn.functional.binary_cross_entropy_with_logits(z, y.double())
        loss = loss + 5e-3 * sum((p**2).sum() for p in lin.parameters())
        loss.backward()
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    lam = 1e-2
    got = InfluenceScorer(model.eval(), (x, y), method="exact", damping=lam, progress=False)
    flat = torch.cat([lin.weight.detach().flatten(), lin.bias.detach()])

    def logistic(f: torch.Tensor, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        z = xi @ f[:6] + f[6]
        return nn.functional.binary_cross_entropy_with_logits(z, yi.double())

    grads = vmap(grad(logistic), in_dims=(None, 0, 0))(flat, x, y)
    h = hessian(lambda f: vmap(logistic, in_dims=(None, 0, 0))(f, x, y).mean())(flat)
    inv = torch.linalg.inv(h + lam * torch.eye(7, dtype=torch.float64))
    want = torch.einsum("ip,pq,iq->i", grads, inv, grads).numpy()
    np.testing.assert_allclose(got.self_influence().scores, want, rtol=1e-9)
    df = find_label_errors(model, (x, y), eval_data=(x[:20], y[:20]), progress=False)
    assert set(df["predicted_label"].astype(int)) <= {0, 1} and df["score"].notna().all()


def test_probability_outputs_are_refused_log_probabilities_score_like_logits() -> None:
    """A final ``nn.Softmax`` makes the outputs probabilities: cross-entropy on them is not
    the model's loss, so the scorer and the registry's data check refuse it naming the fix.
    A final ``nn.LogSoftmax`` is fine: its self-influence equals the logits model's."""
    from infgate.errors import ModelStateError
    from infgate.registry.datasets import check_data_fits

    torch.manual_seed(0)
    base = _Net("tensor").double().eval()
    x = torch.randn(40, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(1))
    probs = nn.Sequential(base, nn.Softmax(-1)).eval()
    with pytest.raises(ModelStateError, match=r"returns probabilities .* without its final"):
        InfluenceScorer(probs, (x, y), method="exact", damping=1e-2, progress=False)
    logp = nn.Sequential(base, nn.LogSoftmax(-1)).eval()
    a = InfluenceScorer(base, (x, y), method="exact", damping=1e-2, progress=False)
    b = InfluenceScorer(logp, (x, y), method="exact", damping=1e-2, progress=False)
    np.testing.assert_allclose(b.self_influence().scores, a.self_influence().scores, rtol=1e-9)
    import copy

    with pytest.raises(ModelStateError, match="returns probabilities"):  # the scan's check
        check_data_fits(copy.deepcopy(probs).float(), x.float().numpy(), y.numpy())


class _SigmoidHead(nn.Module):
    """A binary model whose forward applies ``torch.sigmoid`` itself (no nn.Sigmoid)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(x)).squeeze(-1)


def test_sigmoid_outputs_of_a_one_logit_model_are_refused() -> None:
    """A binary model ending in a sigmoid returns probabilities, which read as logits would
    give a wrong loss; the scorer and the data check refuse it, whether the sigmoid is a
    Sequential's last module, a ``torch.sigmoid`` call in ``forward`` or a node of an
    exported (pt2) graph. The same model without the sigmoid scores."""
    from infgate.errors import ModelStateError
    from infgate.influence.gradients import final_sigmoid
    from infgate.registry.datasets import check_data_fits

    torch.manual_seed(0)
    x = torch.randn(40, 6)
    y = (x[:, 0] > 0).long()
    logit = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 1)).eval()
    seq = nn.Sequential(logit, nn.Sigmoid()).eval()
    own = _SigmoidHead().eval()
    batch = {"x": {0: torch.export.Dim("batch")}}
    exported = torch.export.export(own, (x[:2],), dynamic_shapes=batch).module()
    for model in (seq, own, exported):
        assert final_sigmoid(model)
        with pytest.raises(ModelStateError, match="ends in a sigmoid"):
            InfluenceScorer(model, (x, y), method="exact", damping=1e-2, progress=False)
        with pytest.raises(ModelStateError, match="ends in a sigmoid"):
            check_data_fits(model, x.numpy(), y.numpy())
    assert not final_sigmoid(logit)
    gated = nn.Sequential(nn.Linear(6, 6), nn.Sigmoid(), nn.Linear(6, 1)).eval()  # not final
    assert not final_sigmoid(gated)
    scores = InfluenceScorer(logit, (x, y), method="exact", damping=1e-2, progress=False)
    assert np.isfinite(scores.self_influence().scores).all()
