"""Domain mismatch: calibration under no shift, power under a planted shift, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from infgate.detect import MismatchDetector, detect_mismatch
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
