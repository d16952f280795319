"""Self-influence back-ends side by side (issue 5; BENCHMARKS.md section 4).

One command::

    .venv/bin/python benchmarks/bench_backends.py            # ~10-15 min on 2 shared cores
    .venv/bin/python benchmarks/bench_backends.py --quick    # smaller n, a few minutes

Same model, same data, same damping for every contender: infgate's back-ends, a
per-example autograd loop, pyDVL, Captum and Kronfluence, on an MLP and a small CNN trained
on scikit-learn digits. Reports time, time ratio to the infgate counterpart, and fidelity
(Spearman and top-10% overlap of self-influence against infgate's exact Gauss-Newton
scores), then 1 vs 2 Dask workers throughput and time/peak memory vs n. Writes
benchmarks/results/backends.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.datasets import load_digits
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_backends_peers import captum_run, kronfluence_run, pydvl_run
from infgate.examples.models import train_classifier
from infgate.influence import InfluenceScorer
from infgate.influence.sharding import sharded_self_influence

RESULTS = Path(__file__).resolve().parent / "results" / "backends.json"
WEIGHT_DECAY = 1e-3  # also the damping: H + lambda I is the training objective's curvature


def digits(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(d.target))[:n]
    x = torch.tensor(d.data[idx] / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target[idx], dtype=torch.int64)
    return x, y


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3)
        self.conv2 = nn.Conv2d(6, 8, 3)
        self.head = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], 1, 8, 8)
        return self.head(torch.tanh(self.conv2(torch.tanh(self.conv1(x)))).flatten(1))


def make_model(kind: str, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    torch.manual_seed(0)  # module init only
    model: nn.Module = (
        nn.Sequential(nn.Linear(64, 24), nn.Tanh(), nn.Linear(24, 10)) if kind == "mlp" else CNN()
    )
    return train_classifier(model, x, y, weight_decay=WEIGHT_DECAY, max_iter=300)


def timed(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray | None, float, str | None]:
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # a peer failing is a result, reported as such
        return None, time.perf_counter() - t0, f"{type(exc).__name__}: {str(exc)[:300]}"
    return np.asarray(out, dtype=np.float64).reshape(-1), time.perf_counter() - t0, None


def fidelity(scores: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    s = scores * np.sign(np.median(scores) or 1.0)  # libraries differ in sign convention
    k = max(1, round(0.1 * len(ref)))
    top = len(set(np.argsort(-s)[:k]) & set(np.argsort(-ref)[:k])) / k
    return float(spearmanr(s, ref)[0]), top


def infgate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    method: str,
    idx: np.ndarray | None = None,
    **opts: Any,
) -> np.ndarray:
    sc = InfluenceScorer(
        model,
        (x, y),
        method=method,
        damping=WEIGHT_DECAY,
        batch_size=256,
        progress=False,
        backend_options=opts,
    )
    data = None if idx is None else (x[idx], y[idx])
    return sc.self_influence(data).scores


def loop_baseline(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """What a user writes by hand: per-example autograd loop, then solve with the matrix."""
    params = [p for p in model.parameters()]
    grads = []
    for i in range(x.shape[0]):
        loss = nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    g = torch.stack(grads).double()
    sc = InfluenceScorer(model, (x, y), damping=WEIGHT_DECAY, progress=False)  # same H
    assert sc.backend.h is not None
    a = sc.backend.h + WEIGHT_DECAY * torch.eye(g.shape[1], dtype=torch.float64)
    return (g * torch.linalg.solve(a, g.T).T).sum(1).numpy()


def gradient_floor(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    sc = InfluenceScorer(model, (x[:2], y[:2]), method="tracin", progress=False)
    t0 = time.perf_counter()
    for s in range(0, x.shape[0], 256):
        sc.engine.per_example_grads(s, x[s : s + 256], y[s : s + 256])
    return time.perf_counter() - t0


def warm_up(model: nn.Module, x: torch.Tensor, y: torch.Tensor, peers: bool) -> None:
    """Run every infgate back-end once on a few examples and import the peers, so no
    contender's time includes one-off imports or first-call set-up."""
    for method in ("exact", "cg", "lissa", "arnoldi", "ekfac", "kfac", "tracin"):
        opts: dict[str, Any] = {"depth": 2} if method == "lissa" else {}
        opts = {"rank": 4} if method == "arnoldi" else opts
        infgate(model, x[:40], y[:40], method, **opts)
    loop_baseline(model, x[:20], y[:20])
    if peers:
        from bench_backends_peers import _pydvl

        _pydvl()
        import captum.influence  # noqa: F401
        import kronfluence.analyzer  # noqa: F401


def run_model(kind: str, n: int, n_query: int, lissa_depth: int, peers: bool) -> list[dict]:
    x, y = digits(n)
    model = make_model(kind, x, y)
    p = sum(q.numel() for q in model.parameters())
    q_idx = np.arange(n_query)
    all_idx = np.arange(n)
    rows: list[dict] = []

    warm_up(model, x, y, peers)
    ref, t_exact, err = timed(lambda: infgate(model, x, y, "exact"))
    assert ref is not None, err
    scale = (
        1.2
        * float(
            torch.linalg.eigvalsh(
                InfluenceScorer(model, (x, y), damping=WEIGHT_DECAY, progress=False).backend.h
            )[-1]
        )
        + WEIGHT_DECAY
    )
    cg_opts = {"rtol": 1e-5, "maxiter": 100}
    arn = {"rank": 100}
    jobs: list[tuple[str, str, str, np.ndarray, Callable[[], np.ndarray]]] = [
        ("infgate", "exact (GN)", "exact", all_idx, lambda: ref),
        ("infgate", "cg", "cg", q_idx, lambda: infgate(model, x, y, "cg", q_idx, **cg_opts)),
        (
            "infgate",
            "lissa",
            "lissa",
            q_idx,
            lambda: infgate(model, x, y, "lissa", q_idx, depth=lissa_depth, scale=scale),
        ),
        (
            "infgate",
            "arnoldi r=100",
            "arnoldi",
            all_idx,
            lambda: infgate(model, x, y, "arnoldi", **arn),
        ),
        ("infgate", "ekfac", "ekfac", all_idx, lambda: infgate(model, x, y, "ekfac")),
        ("infgate", "kfac", "kfac", all_idx, lambda: infgate(model, x, y, "kfac")),
        (
            "infgate",
            "tracin (grad norm)",
            "tracin",
            all_idx,
            lambda: infgate(model, x, y, "tracin"),
        ),
        (
            "baseline",
            "per-example autograd loop + solve",
            "exact",
            all_idx,
            lambda: loop_baseline(model, x, y),
        ),
    ]
    if peers:
        bs = 256
        jobs += [
            (
                "pyDVL",
                "DirectInfluence",
                "exact",
                all_idx,
                lambda: pydvl_run("direct", model, x, y, WEIGHT_DECAY, all_idx, batch_size=bs),
            ),
            (
                "pyDVL",
                "CgInfluence (block)",
                "cg",
                q_idx,
                lambda: pydvl_run("cg", model, x, y, WEIGHT_DECAY, q_idx, batch_size=bs, **cg_opts),
            ),
            (
                "pyDVL",
                "LissaInfluence",
                "lissa",
                q_idx,
                lambda: pydvl_run(
                    "lissa",
                    model,
                    x,
                    y,
                    WEIGHT_DECAY,
                    q_idx,
                    batch_size=bs,
                    depth=lissa_depth,
                    scale=scale,
                ),
            ),
            (
                "pyDVL",
                "ArnoldiInfluence r=100",
                "arnoldi",
                all_idx,
                lambda: pydvl_run(
                    "arnoldi", model, x, y, WEIGHT_DECAY, all_idx, batch_size=bs, **arn
                ),
            ),
            (
                "pyDVL",
                "EkfacInfluence",
                "ekfac",
                all_idx,
                lambda: pydvl_run("ekfac", model, x, y, WEIGHT_DECAY, all_idx, batch_size=bs),
            ),
            (
                "Captum",
                "NaiveInfluenceFunction",
                "exact",
                all_idx,
                lambda: captum_run("naive", model, x, y, WEIGHT_DECAY, all_idx, batch_size=bs),
            ),
            (
                "Captum",
                "ArnoldiInfluenceFunction r=100",
                "arnoldi",
                all_idx,
                lambda: captum_run(
                    "arnoldi",
                    model,
                    x,
                    y,
                    WEIGHT_DECAY,
                    all_idx,
                    batch_size=bs,
                    rank=100,
                    krylov=200,
                ),
            ),
            (
                "Captum",
                "TracInCP.self_influence",
                "tracin",
                all_idx,
                lambda: captum_run("tracin", model, x, y, WEIGHT_DECAY, all_idx, batch_size=bs),
            ),
            (
                "Kronfluence",
                "compute_self_scores (EK-FAC)",
                "ekfac",
                all_idx,
                lambda: kronfluence_run(model, x, y, WEIGHT_DECAY, all_idx, batch_size=bs),
            ),
        ]
    ours: dict[str, float] = {}
    for tool, name, family, idx, fn in jobs:
        scores, secs, error = (ref, t_exact, None) if name == "exact (GN)" else timed(fn)
        row: dict[str, Any] = {
            "model": kind,
            "params": p,
            "n_train": n,
            "tool": tool,
            "method": name,
            "family": family,
            "n_scored": len(idx),
            "seconds": secs,
            "error": error,
        }
        if scores is not None:
            row["spearman"], row["top10_overlap"] = fidelity(scores, ref[idx])
        if tool == "infgate":
            ours[family] = secs
        elif family in ours and error is None:
            row["slower_than_infgate_x"] = secs / ours[family]
        rows.append(row)
        print(_fmt(row), flush=True)
    floor = gradient_floor(model, x, y)
    for r in rows:
        if r["tool"] == "infgate" and r["n_scored"] == n:
            r["time_over_gradient_sweep"] = r["seconds"] / floor
    rows.append(
        {
            "model": kind,
            "params": p,
            "tool": "floor",
            "method": "one vectorized per-example-gradient sweep",
            "n_scored": n,
            "seconds": floor,
        }
    )
    return rows


def _fmt(r: dict) -> str:
    fid = f"rho={r['spearman']:.3f} top10={r['top10_overlap']:.2f}" if "spearman" in r else ""
    ratio = f"x{r['slower_than_infgate_x']:.1f}" if "slower_than_infgate_x" in r else ""
    err = f"ERROR {r['error'][:120]}" if r.get("error") else ""
    return (
        f"{r['model']:4} {r['tool']:11} {r['method']:34} n={r['n_scored']:5} "
        f"{r['seconds']:8.2f}s {ratio:>8} {fid} {err}"
    )


def dask_scaling(n: int) -> dict[str, Any]:
    """Throughput of 1 vs 2 Dask worker processes (1 thread each) on the same shards.

    Two jobs: exact self-influence (``sharded_self_influence``; a GEMM per batch, cheap per
    example) and the scan flow's influence-stage sweep (``sharded_approximate_loo``: Jacobian,
    solve and leave-one-out outputs per example), both fitted once on digits and run on
    ``n`` jittered copies.
    """
    from distributed import Client, LocalCluster, get_task_stream
    from infgate.detect.loo import sharded_approximate_loo

    x0, y0 = digits(1797)
    model = make_model("mlp", x0, y0)
    g = torch.Generator().manual_seed(1)
    reps = -(-n // len(y0))
    x = (x0.repeat(reps, 1) + 0.05 * torch.randn(reps * len(y0), 64, generator=g))[:n]
    y = y0.repeat(reps)[:n]
    sc = InfluenceScorer(model, (x0, y0), damping=WEIGHT_DECAY, progress=False)
    big = InfluenceScorer(model, (x, y), damping=WEIGHT_DECAY, progress=False)
    jobs: dict[str, tuple[int, Callable[[Any], np.ndarray]]] = {
        "self_influence": (
            1000,
            lambda c: (
                sharded_self_influence(
                    sc, (x, y), shard_size=1000, client=c, threads_per_task=1
                ).scores
            ),
        ),
        "loo_sweep": (
            1000,
            lambda c: (
                sharded_approximate_loo(
                    big, shard_size=1000, client=c, threads_per_task=1
                ).loo_probs
            ),
        ),
    }
    out: dict[str, Any] = {"n": n, "backend": "exact", "jobs": {}}
    for name, (shard, run) in jobs.items():
        res: dict[str, Any] = {"shard_size": shard}
        values = {}
        for workers in (1, 2):
            with (
                LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
                ) as cluster,
                Client(cluster) as client,
            ):
                run(client)  # warm-up: worker imports, the scatter of the fitted curvature
                with get_task_stream(client) as stream:
                    t0 = time.perf_counter()
                    values[workers] = run(client)
                    res[f"seconds_{workers}w"] = time.perf_counter() - t0
                # Summed task compute time: if it grows with workers, they share cores.
                res[f"task_compute_sum_{workers}w"] = sum(
                    ss["stop"] - ss["start"]
                    for task in stream.data
                    for ss in task["startstops"]
                    if ss["action"] == "compute"
                )
        res["speedup"] = res["seconds_1w"] / res["seconds_2w"]
        res["identical"] = bool(np.allclose(values[1], values[2], rtol=1e-6))
        print(
            f"dask {name}: 1 worker {res['seconds_1w']:.1f}s, 2 workers "
            f"{res['seconds_2w']:.1f}s, speedup x{res['speedup']:.2f}, same: {res['identical']}",
            flush=True,
        )
        out["jobs"][name] = res
    return out


def growth_child(n: int) -> None:
    torch.set_num_threads(1)
    x0, y0 = digits(1797)
    model = make_model("mlp", x0, y0)
    reps = -(-n // len(y0))
    x, y = x0.repeat(reps, 1)[:n], y0.repeat(reps)[:n]
    base = _peak_rss_mb()
    t0 = time.perf_counter()
    InfluenceScorer(
        model, (x, y), method="ekfac", damping=WEIGHT_DECAY, progress=False
    ).self_influence()
    secs = time.perf_counter() - t0
    peak = _peak_rss_mb()
    print(
        json.dumps(
            {
                "n": n,
                "seconds": secs,
                "peak_rss_mb": peak,
                "data_mb": (x.numel() * 4 + y.numel() * 8) / 2**20,
                "peak_growth_during_scoring_mb": peak - base,
            }
        )
    )


def _peak_rss_mb() -> float:
    """VmHWM (peak resident set) of this process; unlike ru_maxrss it resets on exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def growth(sizes: list[int]) -> list[dict]:
    rows = []
    for n in sizes:
        res = subprocess.run(
            [sys.executable, __file__, "--growth-child", str(n)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(f"growth: ekfac n={n}: {rows[-1]}", flush=True)
    return rows


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("pyDVL", "captum", "kronfluence", "numpy", "dask", "distributed"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def markdown(result: dict[str, Any]) -> str:
    """The results table for RESULTS.md."""
    lines = [
        "| model (params) | tool | method | n scored | seconds | x infgate time | Spearman "
        "| top-10% |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        if r["tool"] == "floor":
            continue
        ratio = f"{r['slower_than_infgate_x']:.1f}" if "slower_than_infgate_x" in r else ""
        fid = (
            f"{r['spearman']:.3f} | {r['top10_overlap']:.2f}"
            if "spearman" in r
            else "fails | " + (r.get("error") or "")[:70].replace("|", "/")
        )
        lines.append(
            f"| {r['model']} ({r['params']:,}) | {r['tool']} | {r['method']} | "
            f"{r['n_scored']} | {r['seconds']:.2f} | {ratio} | {fid} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small n (a few minutes)")
    ap.add_argument("--no-peers", action="store_true", help="infgate and the loop only")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for every contender")
    ap.add_argument("--growth-child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--table", action="store_true", help="print the saved results as markdown")
    ap.add_argument(
        "--dask-only",
        action="store_true",
        help="rerun only the 1 vs 2 Dask workers part (on an idle machine) into the JSON",
    )
    args = ap.parse_args()
    if args.table:
        print(markdown(json.loads(RESULTS.read_text())))
        return
    if args.growth_child:
        growth_child(args.growth_child)
        return
    torch.set_num_threads(args.threads)
    if args.dask_only:
        saved = json.loads(RESULTS.read_text())
        saved["dask"] = dask_scaling(4000 if args.quick else 20000)
        saved["dask"]["date"] = datetime.now(UTC).isoformat(timespec="seconds")
        saved["dask"]["command"] = "python " + " ".join(sys.argv)
        RESULTS.write_text(json.dumps(saved, indent=2, default=float))
        print(f"updated the dask part of {RESULTS}")
        return
    n, n_query, depth = (300, 40, 100) if args.quick else (600, 50, 200)
    t0 = time.perf_counter()
    rows = []
    for kind in ("mlp", "cnn"):
        rows += run_model(kind, n, n_query, depth, peers=not args.no_peers)
    scaling = dask_scaling(4000 if args.quick else 20000)
    grow = growth([2000, 8000] if args.quick else [2000, 8000, 32000])
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), "
        f"{__import__('os').cpu_count()} cores (shared)",
        "cuda": torch.cuda.is_available(),
        "versions": _versions(),
        "damping": WEIGHT_DECAY,
        "rows": rows,
        "dask": scaling,
        "growth": grow,
        "wall_seconds": time.perf_counter() - t0,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {RESULTS} in {result['wall_seconds']:.0f}s")


if __name__ == "__main__":
    main()
