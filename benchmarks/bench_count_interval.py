"""The count's bootstrap interval (``infgate.detect.calibrate.count_interval``): coverage
on data drawn from a known posterior, and cost per draw as the data grow.

One command: ``.venv/bin/python benchmarks/bench_count_interval.py`` (``--reps`` data draws
per setting, default 10). Coverage: training and evaluation rows whose true labels are drawn
from a known posterior, model outputs that posterior over-sharpened (``p^1.5``
renormalised), a share of the training labels flipped uniformly to another class, the
evaluation labels clean; the noise model is calibrated on the evaluation rows and the
interval (90%, 100 draws) scored by whether it holds the true number of wrong labels. Cost:
the fit and the interval at the draw count ``find_label_errors`` picks (at most 200, fewer
above ``INTERVAL_WORK`` rows x classes x draws, never under 50). Writes
``benchmarks/results/count_interval.json`` and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from infgate.detect.calibrate import INTERVAL_WORK, count_interval, fit_noise_model
from infgate.examples.posteriors import draw_noisy_posterior as draw

RESULTS = Path(__file__).resolve().parent / "results"
LEVEL = 0.9


def coverage(n: int, m: int, k: int, rate: float, reps: int, draws: int) -> dict[str, Any]:
    covered, widths, errors = [], [], []
    for rep in range(reps):
        tr, given, ev, y_ev, wrong = draw(n, m, k, rate, 10_000 * rep + round(rate * 1000) + k)
        model = fit_noise_model(tr, given, reference=(ev, y_ev))
        ci = count_interval(model, (tr,), (ev,), y_ev, level=LEVEL, draws=draws, seed=rep)
        covered.append(ci.covers(wrong))
        widths.append(ci.upper - ci.lower)
        errors.append(model.expected_errors - wrong)
    return {
        "n_train": n,
        "n_eval": m,
        "classes": k,
        "flip_rate": rate,
        "reps": reps,
        "covered": int(np.sum(covered)),
        "coverage": float(np.mean(covered)),
        "mean_width": float(np.mean(widths)),
        "mean_count_error": float(np.mean(errors)),
    }


def cost(n: int, m: int, k: int) -> dict[str, Any]:
    tr, given, ev, y_ev, wrong = draw(n, m, k, 0.1, 0)
    t0 = time.perf_counter()
    model = fit_noise_model(tr, given, reference=(ev, y_ev))
    fit_s = time.perf_counter() - t0
    draws = min(200, max(50, int(INTERVAL_WORK / (n * k))))
    t0 = time.perf_counter()
    ci = count_interval(model, (tr,), (ev,), y_ev, level=LEVEL, draws=draws)
    ci_s = time.perf_counter() - t0
    return {
        "n_train": n,
        "n_eval": m,
        "classes": k,
        "fit_seconds": fit_s,
        "draws": draws,
        "interval_seconds": ci_s,
        "seconds_per_draw": ci_s / draws,
        "wrong": wrong,
        "expected": model.expected_errors,
        "interval": [ci.lower, ci.upper],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=10, help="data draws per coverage setting")
    args = ap.parse_args()
    t0 = time.perf_counter()
    cover = [
        coverage(n, m, k, rate, args.reps, 100)
        for n, m, k in ((600, 200, 3), (2000, 300, 10))
        for rate in (0.0, 0.05, 0.10, 0.20)
    ]
    for row in cover:
        print(
            f"n={row['n_train']:>5} m={row['n_eval']} k={row['classes']:>2} "
            f"flips {row['flip_rate']:.0%}: {row['covered']}/{row['reps']} covered, "
            f"mean width {row['mean_width']:.1f}, mean count error {row['mean_count_error']:+.1f}",
            flush=True,
        )
    costs = [cost(n, m, k) for n, m, k in ((600, 200, 3), (10_000, 1000, 10), (200_000, 5000, 10))]
    for row in costs:
        print(
            f"n={row['n_train']:>6} k={row['classes']:>2}: fit {row['fit_seconds']:.2f}s, "
            f"{row['draws']} draws {row['interval_seconds']:.2f}s "
            f"({1000 * row['seconds_per_draw']:.1f} ms/draw)",
            flush=True,
        )
    import torch

    out = {
        "meta": {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "level": LEVEL,
            "wall_seconds": time.perf_counter() - t0,
        },
        "coverage": cover,
        "cost": costs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "count_interval.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
