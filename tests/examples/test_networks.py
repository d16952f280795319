"""Reference network families: sizes, shapes, training, and what ``auto`` does with each."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from infgate.errors import InvalidInputError, ModelStateError
from infgate.examples.networks import (
    TrainOptions,
    digits_images,
    flip_labels,
    make_network,
    token_sequences,
    train_network,
    wave_sequences,
)
from infgate.influence import InfluenceScorer


def test_sizes_and_shapes():
    resnet = make_network("resnet", seed=0).eval()
    assert sum(p.numel() for p in resnet.parameters()) >= 1_000_000
    x, y = digits_images()
    assert x.shape == (1797, 1, 8, 8) and y.dtype == torch.int64
    with torch.no_grad():
        assert resnet(x[:3]).shape == (3, 10)
        assert resnet(x[:3].flatten(1)).shape == (3, 10)  # flat pixels work too
        big = make_network("resnet", seed=0, side=16, width=8).eval()
        assert big(digits_images(16)[0][:2]).shape == (2, 10)
        tokens, _ = token_sequences(5, vocab=30, length=12, seed=1)
        assert tokens.dtype == torch.int64 and int(tokens.max()) < 30
        tf = make_network("transformer", seed=0, vocab=30, classes=4).eval()
        assert tf(tokens).shape == (5, 4)
        waves, _ = wave_sequences(5, length=32)
        assert make_network("conv1d", seed=0, classes=4).eval()(waves).shape == (5, 4)
    a = make_network("mlp", seed=3, in_features=4, classes=2)
    b = make_network("mlp", seed=3, in_features=4, classes=2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_flip_labels_moves_exactly_the_fraction_to_other_classes():
    y = torch.arange(200) % 4
    noisy, mask = flip_labels(y, 0.1, seed=2)
    assert mask.sum() == 20
    assert bool((noisy[torch.as_tensor(mask)] != y[torch.as_tensor(mask)]).all())
    assert torch.equal(noisy[~torch.as_tensor(mask)], y[~torch.as_tensor(mask)])
    with pytest.raises(InvalidInputError, match="fraction must be in"):
        flip_labels(y, 1.5)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_training_fits_the_data(optimizer):
    x, y = digits_images()
    x, y = x[:300].flatten(1), y[:300]
    model = make_network("mlp", seed=0, in_features=64, classes=10, hidden=(32,))
    before = float(torch.nn.functional.cross_entropy(model.eval()(x), y))
    lr = 1e-2 if optimizer == "adam" else 5e-2
    opts = TrainOptions(optimizer=optimizer, epochs=40, lr=lr, until_converged=True, tol=1e-4)
    train_network(model, x, y, opts)
    assert not model.training
    with torch.no_grad():
        after = float(torch.nn.functional.cross_entropy(model(x), y))
    assert after < 0.5 * before
    with pytest.raises(InvalidInputError, match="optimizer must be"):
        TrainOptions(optimizer="rmsprop")  # type: ignore[arg-type]


def test_auto_on_each_family_says_what_each_parameter_got():
    x, y = digits_images()
    cnn = make_network("resnet", seed=0, width=4).eval()  # 5,142 params: exact fits
    sc = InfluenceScorer(cnn, (x[:40], y[:40]), method="auto", progress=False)
    assert sc.choice.method == "exact" and "<= 11,180" in sc.choice.reason
    tokens, labels = token_sequences(24, vocab=30, length=8, seed=0)
    tf = make_network("transformer", seed=0, vocab=30, classes=4, d_model=32, ff=64).eval()
    sc = InfluenceScorer(tf, (tokens, labels), method="auto", progress=False)
    choice = sc.choice.to_dict()
    assert choice["method"] == "ekfac"
    own = choice["own_block"]
    assert own["embed.weight"] == "embed (Embedding): embedding table"
    assert "embed's output gradients" in own["pos.weight"]  # shared positions, checked
    assert "normalisation" in own["norm.weight"]
    for name in ("linear1.weight", "self_attn.in_proj_weight", "self_attn.out_proj.weight"):
        assert f"encoder.layers.0.{name}" in choice["covered"]  # Kronecker-factored
    assert sc.backend.describe()["own_block_params"] == 0  # no per-example block
    assert np.all(sc.self_influence().scores > 0)
    with pytest.raises(ModelStateError, match="training mode"):
        InfluenceScorer(tf.train(), (tokens, labels), method="auto", progress=False)


def test_equal_options_train_equal_networks_with_dropout():
    """Dropout masks come from the seed, not from whatever the global generator holds, and
    the caller's global random state is left as it was."""
    x, y = digits_images()
    x, y = x[:128], y[:128]
    opts = TrainOptions(epochs=2, seed=3)
    weights = []
    for noise in (0, 1):
        torch.manual_seed(100 + noise)  # a different global state before each training
        state = torch.random.get_rng_state()
        net = make_network("resnet", seed=0, width=4)
        assert any(isinstance(m, torch.nn.Dropout) for m in net.modules())
        train_network(net, x, y, opts)
        assert torch.equal(torch.random.get_rng_state(), state)  # restored
        weights.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
    assert torch.equal(weights[0], weights[1])
