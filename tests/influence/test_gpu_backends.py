"""Every back-end on CUDA agrees with itself on CPU (skipped without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
from infgate.influence import self_influence

from tests.influence.approx_helpers import DAMPING, default_cnn, default_mlp

OPTIONS: dict[str, dict[str, object]] = {
    "exact": {},
    "cg": {},
    "lissa": {"depth": 100, "scale": 5.0},
    "arnoldi": {"rank": 40},
    "ekfac": {},
    "kfac": {},
    "tracin": {},
}


@pytest.mark.gpu
@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_cuda_matches_cpu(method):
    for model, x, y in (default_mlp(), default_cnn()):
        kw = {
            "method": method,
            "damping": DAMPING,
            "progress": False,
            "batch_size": 100,
            "backend_options": OPTIONS[method],
        }
        cpu = self_influence(model, (x, y), device="cpu", **kw)
        gpu = self_influence(model, (x, y), device="cuda", **kw)
        assert gpu.device.startswith("cuda")
        np.testing.assert_allclose(gpu.scores, cpu.scores, rtol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["exact", "ekfac"])
def test_cuda_leverage_and_filter_match_cpu(method):
    """The detectors' reuse of the fit (leverage, filtered model) runs on CUDA too."""
    from infgate.detect.filtered import filtered_probabilities
    from infgate.detect.loo import approximate_loo
    from infgate.influence import InfluenceScorer

    model, x, y = default_cnn()
    kw = {"method": method, "damping": DAMPING, "progress": False, "batch_size": 100}
    cpu = InfluenceScorer(model, (x, y), device="cpu", **kw)
    gpu = InfluenceScorer(model, (x, y), device="cuda", **kw)
    a, b = approximate_loo(cpu), approximate_loo(gpu)
    np.testing.assert_allclose(b.loo_probs, a.loo_probs, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(b.self_influence, a.self_influence, rtol=1e-6)
    np.testing.assert_allclose(
        filtered_probabilities(gpu), filtered_probabilities(cpu), rtol=1e-6, atol=1e-9
    )
