"""Exact self-influence vs the floor (one vectorized per-example-gradient sweep).

For each n, a fresh subprocess builds synthetic data (d features, C classes), an MLP, and
times (a) one per-example-gradient sweep over all n rows, (b) exact self-influence (curvature
fit + scoring), and records the process's peak RSS minus the data's own size.

Run: ``.venv/bin/python benchmarks/bench_exact.py [--sizes 2000,5000,...] [--hidden 128]``
Writes ``benchmarks/results/exact.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _one(n: int, d: int, hidden: int, classes: int, batch: int) -> dict[str, float]:
    import torch
    from infgate.examples.models import make_classifier
    from infgate.influence import InfluenceScorer
    from infgate.influence.batches import BatchSource

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    model = make_classifier(d, classes, hidden=(hidden,), generator=g).eval()
    from infgate.influence.gradients import GradientEngine
    from infgate.influence.objective import CrossEntropyObjective

    # Warm both code paths (vmap/jacrev tracing) on one batch so neither timing pays it.
    InfluenceScorer(model, (x[:batch], y[:batch]), damping=1e-3, progress=False)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # Floor: one vectorized per-example gradient sweep (same engine, same batches).
    engine = GradientEngine(model, CrossEntropyObjective(), device=torch.device("cpu"))
    src = BatchSource((x, y), batch_size=batch, device=torch.device("cpu"), dtype=torch.float32)
    t0 = time.perf_counter()
    for start, xb, yb in src:
        engine.per_example_grads(start, xb, yb)
    floor = time.perf_counter() - t0
    t0 = time.perf_counter()
    scorer = InfluenceScorer(model, (x, y), damping=1e-3, batch_size=batch, progress=False)
    res = scorer.self_influence()
    total = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "n": n,
        "n_params": res.n_params,
        "floor_s": floor,
        "fit_s": res.timings["fit"],
        "score_s": res.timings["score"],
        "total_s": total,
        "ratio_to_floor": total / floor,
        "score_ratio_to_floor": res.timings["score"] / floor,
        "peak_rss_mb": peak,
        "rss_before_mb": rss0,
        "data_mb": (x.numel() * 4 + y.numel() * 8) / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="2000,8000,32000")
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=150)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--out", default=str(RESULTS / "exact.json"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_one(args.n, args.features, args.hidden, args.classes, args.batch)))
        return
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--n",
            str(n),
            "--features",
            str(args.features),
            "--hidden",
            str(args.hidden),
            "--classes",
            str(args.classes),
            "--batch",
            str(args.batch),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"n={row['n']:>7,} P={row['n_params']:,} floor={row['floor_s']:.2f}s "
            f"fit={row['fit_s']:.2f}s score={row['score_s']:.2f}s "
            f"ratio={row['ratio_to_floor']:.1f} score/floor={row['score_ratio_to_floor']:.1f} "
            f"peakRSS-data={row['peak_rss_mb'] - row['data_mb']:.0f}MB",
            flush=True,
        )
    import torch

    meta = {
        "benchmark": "exact self-influence vs per-example-gradient floor",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''} "
        f"{torch.get_num_threads()} torch threads".strip(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": vars(args) | {"child": None, "n": None},
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(meta, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
