"""Domain mismatch: calibration under no shift, power under a planted shift, bad input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from infgate.detect import LooOutputs, MismatchDetector, detect_mismatch
from infgate.errors import DatasetMismatchError, InvalidInputError

from .conftest import WEIGHT_DECAY, Split

N_NULL = 30
ALPHA = 0.10


@pytest.fixture(scope="module")
def detector(digits_split: Split) -> MismatchDetector:
    s = digits_split
    return MismatchDetector(
        s.model,
        (s.x_train, s.y_train),
        damping=WEIGHT_DECAY,
        max_reference=600,
        n_permutations=99,
        seed=0,
    )


def test_false_alarm_rate_under_no_shift(detector: MismatchDetector, digits_split: Split) -> None:
    """30 random no-shift eval sets of 150 rows at alpha = 0.10.

    Tolerance: with a valid test the number of rejections is stochastically below
    Binomial(30, 0.10) (mean 3); P(>= 8) = 0.006, so we allow at most 7. Per-example
    conformal p-values: the fraction <= 0.10 over all 4,500 null rows stays <= 0.15.
    """
    rng = np.random.default_rng(123)
    rejections, small_p, total = 0, 0, 0
    for _ in range(N_NULL):
        rows = rng.choice(len(digits_split.pool_x), size=150, replace=False)
        report = detector.test(digits_split.pool_x[rows], alpha=ALPHA)
        assert 0.0 < report.p_value <= 1.0
        rejections += int(report.flagged)
        small_p += int((report.example_p_values <= ALPHA).sum())
        total += len(rows)
    assert rejections <= 7
    assert small_p / total <= ALPHA + 0.05


def test_planted_shift_is_flagged_with_drivers(
    detector: MismatchDetector, digits_split: Split
) -> None:
    x = digits_split.pool_x[:200].copy()
    x[:20] = 1.0 - x[:20]  # 10% inverted images
    report = detector.test(x, alpha=0.05)
    assert report.flagged and report.p_value <= 0.05
    assert report.example_flagged[:20].mean() >= 0.7
    assert report.example_flagged[20:].mean() <= 0.05
    assert len(report.drivers) > 0
    assert set(report.drivers["role"]) <= {"supporting", "opposing"}
    assert np.isclose(report.driver_groups["influence_share"].sum(), 1.0)
    d = report.to_dict()
    assert d["flagged"] is True and d["n_eval"] == 200 and len(d["examples"]) == 200


def test_eval_forms_and_labels(detector: MismatchDetector, digits_split: Split) -> None:
    x, y = digits_split.pool_x[:60], digits_split.pool_y[:60]
    by_pair = detector.test((torch.as_tensor(x), torch.as_tensor(y)))
    by_frame = detector.test(pd.DataFrame(x))
    np.testing.assert_allclose(by_pair.example_scores, by_frame.example_scores, rtol=1e-5)


def test_bad_eval_input_raises_clear_errors(digits_split: Split) -> None:
    s = digits_split
    train = (s.x_train, s.y_train)
    with pytest.raises(DatasetMismatchError, match=r"rows of shape \(10,\).*\(64,\)"):
        detect_mismatch(s.model, train, s.pool_x[:50, :10])
    with pytest.raises(InvalidInputError, match="empty"):
        detect_mismatch(s.model, train, np.zeros((0, 64), dtype=np.float32))
    labels = s.pool_y[:50].copy()
    labels[0] = 10
    with pytest.raises(InvalidInputError, match=r"contain 10 .* 10 classes"):
        detect_mismatch(s.model, train, (s.pool_x[:50], labels))
    with pytest.raises(InvalidInputError, match="alpha"):
        detect_mismatch(s.model, train, s.pool_x[:50], alpha=1.5)


def test_held_out_reference_path(digits_split: Split) -> None:
    s = digits_split
    det = MismatchDetector(
        s.model,
        (s.x_train, s.y_train),
        reference=s.pool_x[:400],
        damping=WEIGHT_DECAY,
        n_permutations=99,
        seed=1,
    )
    assert det.reference_kind == "held-out reference rows"
    assert len(det.cal_scores) == 400
    null = det.test(s.pool_x[400:600])
    shifted = det.test(s.pool_x[400:600] + 0.3)
    assert not null.flagged and shifted.flagged
    assert null.details["n_reference"] == 400


# -- networks that memorise: only exactly valid tests without a held-out reference ----------


def _blobs(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two heavily overlapping 8-D classes: a network reaches 100% training accuracy only by
    memorising."""
    y = rng.integers(0, 2, n)
    x = rng.normal(0.0, 1.0, (n, 8)) + 0.3 * y[:, None]
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)


def _memorising_mlp(x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.nn.Module:
    from infgate.examples.networks import make_network

    torch.manual_seed(seed)
    model = make_network("mlp", seed=seed, in_features=8, classes=2, hidden=(32, 32))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def test_memorising_network_null_rejection_rate_is_at_most_alpha() -> None:
    """20 independent splits, each a fresh MLP trained to 100% training accuracy on
    overlapping classes, eval drawn from the same distribution, alpha = 0.2.

    The default test (no reference) is built from exactly valid tests only, so its
    rejections are stochastically below Binomial(20, 0.2) (mean 4); P(>= 9) = 0.01, so at
    most 8 are allowed. The per-example conformal p-values are exactly valid too: the share
    <= 0.2 over all 1,200 null rows stays <= 0.26. The
    curvature is never fitted: the exactly valid tests need none.
    """
    alpha, rejections, small_p, total, train_acc = 0.2, 0, 0, 0, []
    for rep in range(20):
        rng = np.random.default_rng(rep)
        x, y = _blobs(200, rng)
        model = _memorising_mlp(x, y, rep)
        with torch.no_grad():
            train_acc.append(float((model(x).argmax(1) == y).float().mean()))
        det = MismatchDetector(model, (x, y), n_permutations=99, max_reference=200, seed=rep)
        x_eval, _ = _blobs(60, rng)
        report = det.test(x_eval, alpha=alpha)
        assert report.details["exactly_valid"] and "mmd_outputs" not in report.details["tests"]
        assert "skipped" in report.details["outputs_test"] and "linear" in report.method
        assert det._scorer is None or report.example_flagged.any() or report.flagged  # drivers
        rejections += int(report.flagged)
        small_p += int((report.example_p_values <= alpha).sum())
        total += len(x_eval)
    assert min(train_acc) >= 0.97  # the networks memorise
    assert rejections <= 8
    assert small_p / total <= alpha + 0.06


def test_memorising_network_detects_an_obvious_shift() -> None:
    """A covariate shift of every row, and 20% far-off rows flagged one by one (split
    conformal on 150 calibration rows: p >= 1/151, below BH's 0.05 x 20/100 = 0.01)."""
    rng = np.random.default_rng(50)
    x, y = _blobs(300, rng)
    model = _memorising_mlp(x, y, 50)
    det = MismatchDetector(model, (x, y), n_permutations=199, max_reference=300, seed=0)
    x_eval, _ = _blobs(100, rng)
    shifted = x_eval.clone()
    shifted[:, 0] += 1.5  # covariate shift of every row
    assert det.test(shifted, alpha=0.05).p_value <= 0.02  # the smallest possible: 1 / 200
    outliers = x_eval.clone()
    outliers[:20] = torch.as_tensor(rng.normal(4.0, 0.5, (20, 8)), dtype=torch.float32)
    report = det.test(outliers, alpha=0.05)
    assert report.flagged
    assert report.example_flagged[:20].all() and report.example_flagged[20:].mean() <= 0.05
    assert "nearest" in report.details["example_score"]


def test_random_twin_does_not_depend_on_the_trained_weights() -> None:
    """The random-feature representation is the same function for two models trained on
    different data (so it cannot be biased by either training set)."""
    from infgate.detect.mismatch import glm_reason, random_twin

    rng = np.random.default_rng(3)
    a = _memorising_mlp(*_blobs(100, rng), 1)
    b = _memorising_mlp(*_blobs(100, rng), 2)
    ta, tb = random_twin(a, 7), random_twin(b, 7)
    for (na, pa), (_, pb) in zip(ta.named_parameters(), tb.named_parameters(), strict=True):
        assert torch.equal(pa, pb), na
    assert not torch.equal(next(ta.parameters()), next(a.parameters()))
    assert glm_reason(a) is not None and "not linear" in str(glm_reason(a))
    softmax = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 2))
    assert glm_reason(softmax) is None


def test_precomputed_loo_equals_recomputed(digits_split: Split) -> None:
    """Passing the ranking's leave-one-out outputs for all rows gives the same reference
    (to float round-off) and the same test results as sweeping the subsample again."""
    from infgate.detect import approximate_loo
    from infgate.influence import InfluenceScorer

    s = digits_split
    train = (s.x_train, s.y_train)
    scorer = InfluenceScorer(s.model, train, damping=WEIGHT_DECAY, progress=False)
    kw: dict[str, Any] = dict(scorer=scorer, max_reference=300, n_permutations=99, seed=4)
    fresh = MismatchDetector(s.model, train, **kw)
    reused = MismatchDetector(s.model, train, loo=approximate_loo(scorer), **kw)
    assert fresh.ref_probs is not None and reused.ref_probs is not None
    np.testing.assert_allclose(reused.ref_probs, fresh.ref_probs, rtol=0, atol=1e-10)
    np.testing.assert_allclose(reused.cal_scores, fresh.cal_scores, rtol=1e-8, atol=1e-12)
    a, b = fresh.test(s.pool_x[:120]), reused.test(s.pool_x[:120])
    assert a.p_value == pytest.approx(b.p_value) and a.details["tests"] == b.details["tests"]
    np.testing.assert_allclose(a.example_p_values, b.example_p_values)
    assert "mmd_outputs" in a.details["tests"] and "GLM" in a.details["outputs_test"]
    with pytest.raises(InvalidInputError, match="loo has 10 rows"):
        MismatchDetector(s.model, train, loo=_loo_rows(approximate_loo(scorer), 10), **kw)


def _loo_rows(loo: LooOutputs, k: int) -> LooOutputs:
    from dataclasses import fields

    return LooOutputs(**{f.name: getattr(loo, f.name)[:k] for f in fields(LooOutputs)})


def test_reads_a_subsample_through_batches_never_all_features(
    digits_split: Split, monkeypatch: pytest.MonkeyPatch
) -> None:
    import infgate.detect._inputs as inputs

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("the detector loaded every training feature")

    monkeypatch.setattr(inputs, "dataset_tensors", refuse)
    s = digits_split
    data = torch.utils.data.TensorDataset(s.x_train, s.y_train)
    det = MismatchDetector(
        s.model, data, damping=WEIGHT_DECAY, max_reference=100, n_permutations=19, seed=0
    )
    assert det.ref_x.shape[0] == 100 and len(det.train_labels) == len(s.x_train)
    np.testing.assert_array_equal(det.train_labels, s.y_train.numpy())
    assert det.test(s.pool_x[:50]).details["n_reference"] == 100


def test_bag_of_tokens_leaves_padding_and_the_mask_out() -> None:
    """The input test's bag of tokens counts real tokens only: the same sequences padded to
    two lengths give the same bag with the pad id, different bags without it; of a stacked
    ``(input_ids, attention_mask)`` row only the ids count."""
    import torch
    from infgate.detect.representations import TOKEN_BINS, input_features

    seqs = [[5, 6, 6], [7, 1, 2, 3, 4]]

    def padded(length: int) -> torch.Tensor:
        out = torch.zeros(len(seqs), length, dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = torch.as_tensor(s)
        return out

    short, long = padded(5), padded(12)
    a = input_features(short, pad_token_id=0)
    np.testing.assert_array_equal(a, input_features(long, pad_token_id=0))
    assert a.shape == (2, TOKEN_BINS) and a[0, 6] == pytest.approx(2 / 3) and a[0, 0] == 0
    np.testing.assert_allclose(a.sum(1), 1.0)
    assert not np.array_equal(input_features(short), input_features(long))
    stacked = torch.stack([long, (long != 0).long()], dim=1)  # (B, 2, L)
    np.testing.assert_array_equal(input_features(stacked, pad_token_id=0, n_inputs=2), a)


def test_an_exported_softmax_regression_is_a_glm_an_exported_mlp_is_not() -> None:
    """MLflow's pt2 flavour loses module types: the rule reads the graph instead (every
    trainable parameter feeding one ``aten.linear``)."""
    from infgate.detect.mismatch import glm_reason

    def exported(m: torch.nn.Module) -> torch.nn.Module:
        batch = ({0: torch.export.Dim("batch")},)
        return torch.export.export(m.eval(), (torch.randn(2, 8),), dynamic_shapes=batch).module()

    softmax = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 2))
    assert glm_reason(exported(softmax)) is None
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    assert glm_reason(exported(mlp)) is not None
