"""Which clean posterior the suspect count and the suggestion confidence should use.

On the DEVELOPMENT split only (tabular: digits, breast_cancer, spam7, wine; softmax
regression and a 32-unit MLP; 5/10/20% uniform, 20% class-conditional and no flips; seeds
0-1. Networks: the grid's width-8 ResNet, 1-D CNN and 1-layer transformer, 10/20% uniform
and no flips, dev seeds 100-101), the same fitted model and the same ranking are scored with
each ``NoiseModelOptions(posterior=...)``:

- ``model``: the model's leave-one-out outputs through the evaluation map;
- ``neighbours``: the evaluation neighbours' votes through their own map;
- ``both``: the two stacked in one map fitted on the evaluation rows
  (:func:`infgate.detect.calibrate.fit_stacked_scaling`);
- ``auto``: the default (``both`` where the leave-one-out outputs look out-of-sample,
  :func:`infgate.detect.label_errors.loo_in_sample_p_value`, else ``neighbours``).

Reported per family: median count / true count, share of noisy runs within +-25%, flagged
precision and recall, pooled ECE of the suggestion confidence among flagged rows, the
flagged rate on clean data (mean, max, runs above 1%), and which posterior ``auto`` took.
The held-out report is ``bench_label_errors.py`` (``benchmarks/RESULTS.md``).

    .venv/bin/python benchmarks/bench_count_posterior.py          # ~6 min, 2 workers
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = ["model", "neighbours", "both", "auto"]
RESULTS = Path(__file__).resolve().parent / "results"
TABULAR_NOISE = ["uniform_0.05", "uniform_0.1", "uniform_0.2", "class_conditional_0.2", "clean"]


def _flagged(df: Any, clean: np.ndarray, flipped: np.ndarray) -> dict[str, Any]:
    ids = df["example_id"].astype(int).to_numpy()
    suspect = df["is_suspect"].to_numpy()
    flagged = ids[suspect]
    right = df["suggested_label"].to_numpy()[suspect] == clean[flagged]
    conf = df["suggestion_confidence"].to_numpy()[suspect]
    return {
        "n_flagged": int(suspect.sum()),
        "true_positives": int(flipped[flagged].sum()),
        "pairs": [[float(c), bool(r)] for c, r in zip(conf, right, strict=True)],
        "source": df.attrs["noise_posterior"],
    }


def run_tabular(cfg: dict[str, Any]) -> dict[str, Any]:
    import bench_label_errors as grid
    import torch
    from infgate.detect import approximate_loo, find_label_errors
    from infgate.detect.calibrate import NoiseModelOptions
    from infgate.examples.models import make_classifier, train_classifier
    from infgate.influence import InfluenceScorer
    from sklearn.model_selection import train_test_split

    torch.set_num_threads(1)
    seed = cfg["seed"]
    hidden = (32,) if cfg["model"] == "mlp32" else ()
    x_all, y_all = grid.load(cfg["dataset"])
    xtr, xte, clean, yte = train_test_split(
        x_all, y_all, test_size=0.25, stratify=y_all, random_state=seed
    )
    given = grid.noisy_labels(clean, cfg["noise"], np.random.default_rng(seed), seed)
    k = int(y_all.max()) + 1
    xt = torch.as_tensor(xtr)
    model = make_classifier(
        xt.shape[1], k, hidden=hidden, generator=torch.Generator().manual_seed(seed)
    )
    for iters in (5, 15, 50, 300 if hidden else 500):  # as the grid trains it
        train_classifier(model, xt, torch.as_tensor(given), weight_decay=grid.WD, max_iter=iters)
    data = (xt, torch.as_tensor(given))
    scorer = InfluenceScorer(model, data, damping=grid.WD, progress=False)
    loo = approximate_loo(scorer)
    flipped = given != clean
    out = {**cfg, "family": cfg["model"], "n": len(given), "n_flipped": int(flipped.sum())}
    out["variants"] = {
        v: _flagged(
            find_label_errors(
                model,
                data,
                scorer=scorer,
                loo=loo,
                eval_data=(torch.as_tensor(xte), torch.as_tensor(yte)),
                progress=False,
                noise_options=NoiseModelOptions(posterior=v),
            ),
            clean,
            flipped,
        )
        for v in VARIANTS
    }
    return out


def run_network(cfg: dict[str, Any]) -> dict[str, Any]:
    import bench_label_errors as grid
    import torch
    from infgate.detect import approximate_loo, find_label_errors
    from infgate.detect.calibrate import NoiseModelOptions
    from infgate.examples.networks import TrainOptions, flip_labels, train_network
    from infgate.influence import InfluenceScorer

    torch.set_num_threads(1)
    kind, seed = cfg["network"], cfg["seed"]
    x_all, y_all, k = grid._network_data(kind, seed)
    x, y_clean = x_all[: grid.NET_N], y_all[: grid.NET_N]
    eval_pair = (x_all[grid.NET_N :], y_all[grid.NET_N :])
    if cfg["noise"] == "clean":
        y = y_clean.clone()
    else:
        y, _ = flip_labels(y_clean, float(cfg["noise"].split("_")[1]), classes=k, seed=seed)
    opts = TrainOptions(epochs=grid.NET_EPOCHS, lr=3e-3, weight_decay=grid.WD, seed=seed)
    model = train_network(grid._network(kind, k, seed), x, y, opts)
    scorer = InfluenceScorer(model, (x, y), damping=grid.WD, progress=False)
    loo = approximate_loo(scorer)
    clean, given = y_clean.numpy(), y.numpy()
    flipped = given != clean
    out = {**cfg, "family": kind, "n": len(given), "n_flipped": int(flipped.sum())}
    out["variants"] = {
        v: _flagged(
            find_label_errors(
                model,
                (x, y),
                scorer=scorer,
                loo=loo,
                eval_data=eval_pair,
                progress=False,
                noise_options=NoiseModelOptions(posterior=v),
            ),
            clean,
            flipped,
        )
        for v in VARIANTS
    }
    return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from infgate.detect.stats import expected_calibration_error

    summary: dict[str, Any] = {}
    for family in sorted({r["family"] for r in rows}):
        mine = [r for r in rows if r["family"] == family]
        summary[family] = {}
        for v in VARIANTS:
            ratios, clean_rates, pairs, tp, flagged, flips = [], [], [], 0, 0, 0
            for r in mine:
                x = r["variants"][v]
                if r["n_flipped"]:
                    ratios.append(x["n_flagged"] / r["n_flipped"])
                    tp += x["true_positives"]
                    flagged += x["n_flagged"]
                    flips += r["n_flipped"]
                    pairs += x["pairs"]
                else:
                    clean_rates.append(x["n_flagged"] / r["n"])
            conf = np.array([p[0] for p in pairs])
            right = np.array([p[1] for p in pairs])
            summary[family][v] = {
                "count_ratio_median": float(np.median(ratios)),
                "within_25pct": float(np.mean([abs(q - 1) <= 0.25 for q in ratios])),
                "precision": tp / max(flagged, 1),
                "recall": tp / max(flips, 1),
                "ece_pooled": float(expected_calibration_error(conf, right)) if len(conf) else None,
                "clean_flagged_rate": float(np.mean(clean_rates)),
                "clean_flagged_rate_max": float(np.max(clean_rates)),
                "clean_runs_over_1pct": int(sum(c > 0.01 for c in clean_rates)),
                "clean_runs": len(clean_rates),
            }
        summary[family]["auto_took"] = dict(
            collections.Counter(r["variants"]["auto"]["source"] for r in mine)
        )
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()
    import bench_label_errors as grid

    tabular = [
        {"dataset": d, "model": m, "noise": z, "seed": s}
        for d in grid.DEV
        for m in ("softmax", "mlp32")
        for z in TABULAR_NOISE
        for s in range(args.seeds)
    ]
    networks = [
        {"network": n, "noise": z, "seed": 100 + s}
        for n in grid.NETWORKS
        for z in ("uniform_0.1", "uniform_0.2", "clean")
        for s in range(args.seeds)
    ]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(run_network, networks)) + list(pool.map(run_tabular, tabular))
    wall = time.perf_counter() - t0
    summary = summarize(rows)
    for r in rows:
        for x in r["variants"].values():
            x.pop("pairs")
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_seconds": wall,
        "cpus_used": args.workers,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "count_posterior.json"
    path.write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1))
    print(
        "| family | posterior | count / true (median) | within +-25% | precision / recall "
        "| ECE pooled | clean flagged (max; runs > 1%) |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for family, block in summary.items():
        for v in VARIANTS:
            s = block[v]
            ece = "-" if s["ece_pooled"] is None else f"{s['ece_pooled']:.3f}"
            print(
                f"| {family} | {v} | {s['count_ratio_median']:.2f} | {s['within_25pct']:.2f} | "
                f"{s['precision']:.2f} / {s['recall']:.2f} | {ece} | "
                f"{s['clean_flagged_rate']:.4f} ({s['clean_flagged_rate_max']:.4f}; "
                f"{s['clean_runs_over_1pct']} of {s['clean_runs']}) |"
            )
        print(f"| {family} | auto took | {block['auto_took']} | | | | |")
    print(f"\n{len(rows)} runs in {wall:.0f}s -> {path}")


if __name__ == "__main__":
    main()
