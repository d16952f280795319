"""How the leave-one-out approximation behind the noise model's count depends on damping on
networks, and whether a label-free rule can pick it.

One command: ``.venv/bin/python benchmarks/bench_loo_damping.py`` (about 12 minutes on 2
cores). For each network family of ``bench_label_errors.py`` (width-8 ResNet-style CNN on
digits images, width-16 1-D CNN, 1-layer transformer; 600 training rows, Adam 15 epochs,
weight decay 1e-3, 300 clean evaluation rows), clean labels and 10% / 20% uniform flips,
seeds 0-1, the curvature is fitted at damping 1e-3 (the weight decay, the scan's default)
up to 1 and for each: clean training rows whose leave-one-out probability of their (right)
label falls below 0.01, the evaluation-calibrated noise model's expected count, the AP of
the leave-one-out loss as a ranking, and a label-free candidate rule, the Kolmogorov-Smirnov
distance between the leave-one-out confidence (max probability) on the training rows and
the model's confidence on the evaluation rows: training rows left out should look like
rows never trained on, noise or not. Writes ``benchmarks/results/loo_damping.json``.

``--ranking``: the same damping sweep on ``bench_network_ranking.py``'s configurations
(10% flips, weight decay 1e-4, its development seeds 100-101, no ResNet-64), for the
rankings: AP of the leave-one-out loss and margin and of ``find_label_errors``' default
ranking at each damping, against the in-sample loss. Writes
``benchmarks/results/loo_damping_ranking.json`` (about 4 minutes).
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_label_errors as grid

DAMPINGS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
RESULTS = Path(__file__).resolve().parent / "results"


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch
    from infgate.detect import approximate_loo
    from infgate.detect.calibrate import fit_noise_model
    from infgate.detect.eval_influence import eval_probabilities
    from infgate.examples.networks import TrainOptions, flip_labels, train_network
    from infgate.influence import InfluenceScorer
    from scipy.stats import ks_2samp
    from sklearn.metrics import average_precision_score

    torch.set_num_threads(1)
    kind, seed = cfg["network"], cfg["seed"]
    x_all, y_all, k = grid._network_data(kind, seed)
    x, y_clean = x_all[: grid.NET_N], y_all[: grid.NET_N]
    ev = (x_all[grid.NET_N :], y_all[grid.NET_N :])
    if cfg["noise"] == "clean":
        y = y_clean.clone()
    else:
        y, _ = flip_labels(y_clean, float(cfg["noise"].split("_")[1]), classes=k, seed=seed)
    opts = TrainOptions(epochs=grid.NET_EPOCHS, lr=3e-3, weight_decay=grid.WD, seed=seed)
    model = train_network(grid._network(kind, k, seed), x, y, opts)
    flipped = (y != y_clean).numpy()
    labels = y.numpy()
    rows = np.arange(len(labels))
    out = []
    for d in DAMPINGS:
        scorer = InfluenceScorer(model, (x, y), damping=d, progress=False)
        loo = approximate_loo(scorer)
        reference = eval_probabilities(scorer, ev)
        assert reference is not None
        noise = fit_noise_model(loo.loo_probs, labels, reference=reference)
        p_given = loo.loo_probs[rows, labels]
        out.append(
            {
                "damping": d,
                "clean_rows_below_0.01": int(((p_given < 0.01) & ~flipped).sum()),
                "flipped_rows_below_0.01": int(((p_given < 0.01) & flipped).sum()),
                "expected_errors": float(noise.expected_errors),
                "loo_loss_ap": float(average_precision_score(flipped, -p_given))
                if flipped.any()
                else None,
                "ks_confidence": float(
                    ks_2samp(loo.loo_probs.max(1), reference[0].max(1)).statistic
                ),
            }
        )
    print(cfg, "done", flush=True)
    return {**cfg, "n_flipped": int(flipped.sum()), "by_damping": out}


def run_ranking(cfg: tuple[Any, ...]) -> dict[str, Any]:
    import bench_network_ranking as nets
    import torch
    from infgate.detect import approximate_loo, find_label_errors, ranking_scores
    from infgate.examples.networks import TrainOptions, flip_labels, train_network
    from infgate.influence import InfluenceScorer
    from sklearn.metrics import average_precision_score

    torch.set_num_threads(1)
    family, kind, n, epochs, converge, lr, seed = cfg
    x, y, k = nets.data_for(kind, n, seed)
    noisy, mask = flip_labels(y, 0.1, classes=k, seed=seed)
    model = nets.model_for(kind, k, seed)
    wd = 1e-4
    opts = TrainOptions(
        epochs=epochs, lr=lr, batch_size=64, weight_decay=wd, until_converged=converge, seed=seed
    )
    torch.manual_seed(seed)
    train_network(model, x, noisy, opts)
    out = []
    for d in (wd, *DAMPINGS):
        scorer = InfluenceScorer(
            model, (x, noisy), method="auto", damping=d, batch_size=nets.BATCH, progress=False
        )
        loo = approximate_loo(scorer)
        df = find_label_errors(model, (x, noisy), scorer=scorer, progress=False)
        default = np.empty(n)
        default[df["example_id"].astype(int).to_numpy()] = df["score"].to_numpy()
        ap = {
            m: float(average_precision_score(mask, ranking_scores(loo, m)))  # type: ignore[arg-type]
            for m in ("loo_loss", "loo_margin", "loss")
        }
        out.append({"damping": d, **ap, "default": float(average_precision_score(mask, default))})
    print(family, seed, "done", flush=True)
    return {"family": family, "seed": seed, "by_damping": out}


def main_ranking() -> None:
    import bench_network_ranking as nets

    configs = [(*c, s) for c in nets.CONFIGS if c[1] != "resnet64" for s in nets.DEV_SEEDS]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:
        rows = list(pool.map(run_ranking, configs))
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_seconds": time.perf_counter() - t0,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "loo_damping_ranking.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=1)
    )
    for r in rows:
        print(r["family"], r["seed"])
        for b in r["by_damping"]:
            print("  ", {k: round(v, 3) for k, v in b.items()})


def main() -> None:
    if "--ranking" in sys.argv[1:]:
        main_ranking()
        return
    configs = [
        {"network": kind, "noise": noise, "seed": seed}
        for kind in grid.NETWORKS
        for noise in ("clean", "uniform_0.1", "uniform_0.2")
        for seed in (0, 1)
    ]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:
        rows = list(pool.map(run, configs))
    summary = []
    for r in rows:
        best_ks = min(r["by_damping"], key=lambda b: b["ks_confidence"])
        best = min(r["by_damping"], key=lambda b: abs(b["expected_errors"] - r["n_flipped"]))
        summary.append(
            {
                "run": f"{r['network']} {r['noise']} s{r['seed']}",
                "flips": r["n_flipped"],
                "count_at_weight_decay": round(r["by_damping"][0]["expected_errors"], 1),
                "closest_count": round(best["expected_errors"], 1),
                "closest_at": best["damping"],
                "ks_rule_picks": best_ks["damping"],
                "count_at_ks_pick": round(best_ks["expected_errors"], 1),
            }
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_seconds": time.perf_counter() - t0,
        "dampings": DAMPINGS,
    }
    (RESULTS / "loo_damping.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1)
    )
    for s in summary:
        print(s)


if __name__ == "__main__":
    main()
