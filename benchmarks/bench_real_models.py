"""Real models: the whole default label-error search vs the per-example-gradient floor,
its scaling with n, peak memory, and Kronfluence's EK-FAC side by side.

One command (``python benchmarks/bench_real_models.py``; ``--quick`` for a smoke run;
``--device cuda`` on a GPU, see ``benchmarks/gpu.sh``) prints the tables, writes
``benchmarks/results/real_models.json`` and replaces the "Real models" section of
``benchmarks/RESULTS.md``. Every configuration runs in a fresh process (its peak resident
memory is its own) and measures its floor in that same process:

* cost: on the 1.2M-parameter ResNet-style CNN (digits, 8x8; tiled with pixel noise beyond
  1,797 rows) and on the transformer classifier (generated tokens), the whole default
  ``find_label_errors(model, (x, y))`` (``influence_method="auto"``) time over the floor
  (ONE vectorized per-example-gradient sweep over the same data, ``torch.func.vmap(grad)``),
  and peak resident memory;
* scaling: the same call on a tabular MLP (32 -> 256 -> 256 -> 10, 76k parameters, EK-FAC
  under auto; Gaussian blobs) at 5k, 10k, 20k and 50k rows: time per example and peak
  resident memory (``--only scaling``: this part alone, plus resident memory stage by stage
  inside the call at the largest n);
* Kronfluence's EK-FAC ``fit_all_factors`` + ``compute_self_scores`` on the same CNN and
  data, against infgate's whole ``find_label_errors`` and its EK-FAC self-influence alone.

Ranking quality with planted label noise is ``benchmarks/bench_network_ranking.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from infgate.detect import find_label_errors
from infgate.examples.networks import (
    TrainOptions,
    digits_images,
    make_network,
    token_sequences,
    train_network,
)
from infgate.influence import InfluenceScorer
from infgate.influence.gradients import GradientEngine
from infgate.influence.objective import CrossEntropyObjective
from scipy.stats import spearmanr
from torch import nn

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "real_models.json"
RESULTS_MD = HERE / "RESULTS.md"
BATCH = 128
BEGIN, END = "<!-- real_models:begin -->", "<!-- real_models:end -->"


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return float("nan")


def data_for(kind: str, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(x, y, classes)`` for a model family."""
    if kind == "resnet":
        x, y = digits_images()
        reps = -(-n // len(x))
        g = torch.Generator().manual_seed(seed)
        x = x.repeat(reps, 1, 1, 1)[:n]
        noisy = (torch.arange(n) >= 1797).view(-1, 1, 1, 1)
        return x + 0.05 * torch.randn(x.shape, generator=g) * noisy, y.repeat(reps)[:n], 10
    if kind == "transformer":
        x, y = token_sequences(n, vocab=50, length=24, classes=4, seed=seed)
        return x, y, 4
    if kind == "mlp":  # Gaussian blobs: 10 classes, 32 features
        g = torch.Generator().manual_seed(seed)
        centres = 2.0 * torch.randn(10, 32, generator=g)
        y = torch.randint(0, 10, (n,), generator=g)
        return centres[y] + torch.randn(n, 32, generator=g), y, 10
    raise SystemExit(f"unknown model kind {kind!r}")


def model_for(kind: str, classes: int, seed: int = 0) -> nn.Module:
    if kind == "transformer":
        return make_network(kind, seed=seed, vocab=50, classes=classes)
    if kind == "mlp":
        return make_network(kind, seed=seed, in_features=32, classes=classes, hidden=(256, 256))
    return make_network(kind, seed=seed, classes=classes)


def _train(kind: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> None:
    lr = 3e-3 if kind != "resnet" else 1e-3
    train_network(model, x, y, TrainOptions(epochs=epochs, lr=lr, batch_size=64))


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def floor_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: str) -> float:
    """One vmap(grad) per-example-gradient sweep over the data (gradients discarded)."""
    dev = torch.device(device)
    eng = GradientEngine(model, CrossEntropyObjective(), device=dev)
    _sync(dev)
    t0 = time.perf_counter()
    for i in range(0, len(x), BATCH):
        eng.per_example_grads(i, x[i : i + BATCH].to(dev), y[i : i + BATCH].to(dev))
    _sync(dev)
    return time.perf_counter() - t0


def cost_child(kind: str, n: int, device: str) -> dict[str, Any]:
    torch.manual_seed(0)
    x, y, k = data_for(kind, n)
    model = model_for(kind, k)
    _train(kind, model, x, y, epochs=1)  # the cost does not depend on how well it fits
    model.eval()
    if device != "cpu":
        model.to(device)
    base = _status_mb("VmRSS:")
    floor = floor_seconds(model, x, y, device)
    t0 = time.perf_counter()
    scorer = InfluenceScorer(model, (x, y), batch_size=BATCH, progress=False, device=device)
    fit_s = time.perf_counter() - t0
    fit_peak = _status_mb("VmHWM:")
    df = find_label_errors(model, (x, y), scorer=scorer, progress=False)
    _sync(torch.device(device))
    total = time.perf_counter() - t0
    return {
        "model": kind,
        "params": sum(p.numel() for p in model.parameters()),
        "n": n,
        "device": device,
        "method": scorer.backend.name,
        "floor_s": floor,
        "fit_s": fit_s,
        "find_label_errors_s": total,
        "ratio": total / floor,
        "per_example_ms": 1000 * total / n,
        "peak_rss_mb": _status_mb("VmHWM:"),
        "fit_peak_rss_mb": fit_peak,
        "end_rss_mb": _status_mb("VmRSS:"),
        "baseline_rss_mb": base,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device != "cpu" else None,
        "rows": len(df),
    }


def stages_child(n: int) -> dict[str, Any]:
    """The scaling MLP's resident memory stage by stage inside ``find_label_errors`` (no
    floor sweep): VmRSS after each step and the high-water mark while it ran (reset as each
    step starts); then what deleting the result, ``gc`` and glibc's ``malloc_trim`` give back."""
    import ctypes
    import gc

    from infgate.detect import label_errors as le

    def clear() -> None:
        Path("/proc/self/clear_refs").write_text("5")  # high-water mark := current RSS

    marks: list[dict[str, Any]] = []

    def mark(what: str) -> None:
        marks.append({"at": what, "rss_mb": _status_mb("VmRSS:"), "hwm_mb": _status_mb("VmHWM:")})
        clear()

    def wrapped(name: str) -> Any:
        f = getattr(le, name)

        def g(*a: Any, **k: Any) -> Any:
            mark(f"before {name}")
            out = f(*a, **k)
            mark(f"after {name}")
            return out

        return g

    names = ("approximate_loo", "filtered_model", "fit_noise_model", "_compute_frame")
    originals = {name: getattr(le, name) for name in names}
    torch.manual_seed(0)
    x, y, k = data_for("mlp", n)
    model = model_for("mlp", k)
    _train("mlp", model, x, y, epochs=1)
    model.eval()
    clear()
    mark("baseline")
    scorer = InfluenceScorer(model, (x, y), batch_size=BATCH, progress=False)
    mark("after the fit")
    try:
        for name in names:
            setattr(le, name, wrapped(name))
        df = le.find_label_errors(model, (x, y), scorer=scorer, progress=False)
    finally:
        for name, f in originals.items():
            setattr(le, name, f)
    mark("end")
    del df
    gc.collect()
    mark("result deleted, gc")
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    mark("malloc_trim(0)")
    return {"n": n, "marks": marks}


def kronfluence_child(n: int) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    from bench_backends_peers import kronfluence_run

    torch.manual_seed(0)
    x, y, k = data_for("resnet", n)
    model = model_for("resnet", k)
    _train("resnet", model, x, y, epochs=1)
    model.eval()
    lam = 1e-3
    t0 = time.perf_counter()
    find_label_errors(model, (x, y), batch_size=BATCH, progress=False)
    whole_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = InfluenceScorer(
        model, (x, y), method="ekfac", damping=lam, batch_size=BATCH, progress=False,
        backend_options={"fisher": "sampled"},
    ).self_influence().scores  # fmt: skip
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = kronfluence_run(model, x, y, lam, np.arange(n), batch_size=BATCH)
    theirs_s = time.perf_counter() - t0
    return {
        "n": n,
        "infgate_find_label_errors_s": whole_s,
        "infgate_ekfac_s": ours_s,
        "kronfluence_ekfac_s": theirs_s,
        "spearman": float(spearmanr(ours, theirs)[0]),
    }


def run_child(*args: str) -> dict[str, Any]:
    """One configuration in a fresh process (its peak RSS is its own)."""
    res = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        lines = (res.stderr.strip() or "no output").splitlines()
        return {"args": list(args), "error": lines[-1][:300]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("numpy", "kronfluence"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _cost_rows(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| model (params) | back-end | n | floor s (one vmap(grad) sweep) | fit s "
        "| find_label_errors s (fit included) | x floor | ms / example | peak RSS MB (baseline) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in rows:
        if "error" in c:
            out.append(f"| {' '.join(c['args'][2:4])} | | | | | fails: {c['error'][:80]} | | | |")
            continue
        out.append(
            f"| {c['model']} ({c['params']:,}) | {c['method']} | {c['n']:,} | {c['floor_s']:.1f} "
            f"| {c['fit_s']:.1f} | {c['find_label_errors_s']:.1f} | {c['ratio']:.1f} "
            f"| {c['per_example_ms']:.2f} | {c['peak_rss_mb']:.0f} ({c['baseline_rss_mb']:.0f}) |"
        )
    return out


def _targets(r: dict[str, Any]) -> list[str]:
    """The issue's targets, read off this run's rows (met / not met)."""
    ok = [c for c in r["cost"] if "error" not in c and c["n"] >= 1000]
    out = ["Targets, from the rows above:", ""]
    for kind in sorted({c["model"] for c in ok}):
        rows = [c for c in ok if c["model"] == kind]
        worst = max(rows, key=lambda c: c["ratio"])
        verdict = "met" if worst["ratio"] <= 10 else "NOT met"
        each = ", ".join(f"{c['ratio']:.1f}x at {c['n']:,}" for c in rows)
        out.append(
            f"- <= 10x the floor, {kind}: worst {worst['ratio']:.1f}x at n={worst['n']:,} "
            f"({each}): {verdict}."
        )
    big = [c for c in ok if c["params"] >= 1_000_000]
    if big:
        peak = max(c["peak_rss_mb"] for c in big)
        out.append(
            f"- peak RSS <= 4 GB at >= 1M parameters: {peak:,.0f} MB: "
            f"{'met' if peak <= 4096 else 'NOT met'}."
        )
    sc = [c for c in r["scaling"] if "error" not in c]
    if len(sc) >= 2:
        a, b = sc[0], sc[-1]
        out.append(
            f"- linear time, flat memory {a['n']:,} -> {b['n']:,}: {a['per_example_ms']:.2f} -> "
            f"{b['per_example_ms']:.2f} ms per example (floor {1000 * a['floor_s'] / a['n']:.2f} "
            f"-> {1000 * b['floor_s'] / b['n']:.2f}), peak RSS {a['peak_rss_mb']:,.0f} -> "
            f"{b['peak_rss_mb']:,.0f} MB."
        )
    k = r.get("kronfluence") or {}
    if "error" not in k and k:
        faster = k["infgate_find_label_errors_s"] < k["kronfluence_ekfac_s"]
        out.append(
            f"- faster than Kronfluence's EK-FAC self-scores on the same CNN and data "
            f"(n={k['n']}): whole find_label_errors {k['infgate_find_label_errors_s']:.1f} s vs "
            f"{k['kronfluence_ekfac_s']:.1f} s: {'met' if faster else 'NOT met'}."
        )
    return out


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "## Real models (`benchmarks/bench_real_models.py`)",
        "",
        f"{r['date']}, `{r['command']}`; {r['machine']}; "
        + ", ".join(f"{k} {v}" for k, v in r["versions"].items())
        + f". Load average (1/5/15 min) before the run {r['load_before']}, after it "
        f"{r['load']}. Each row is a fresh process; its floor is measured in that process.",
        "",
        "Cost of the whole default `find_label_errors` (auto back-end, filtered-margin "
        "ranking, noise model) over the floor:",
        "",
        *_cost_rows(r["cost"]),
        "",
        "Scaling, the same call (time per example and peak memory should stay flat):",
        "",
        *_cost_rows(r["scaling"]),
    ]
    k = r.get("kronfluence")
    if k and "error" not in k:
        lines += [
            "",
            f"Kronfluence EK-FAC on the CNN, n={k['n']}: {k['kronfluence_ekfac_s']:.1f} s "
            f"(fit_all_factors + compute_self_scores) vs infgate's whole default "
            f"find_label_errors {k['infgate_find_label_errors_s']:.1f} s and its EK-FAC "
            f"self-influence alone {k['infgate_ekfac_s']:.1f} s (fit + scores, sampled "
            f"Fisher); Spearman of the two self-influences {k['spearman']:.3f}.",
        ]
    elif k:
        lines += ["", f"Kronfluence: {k.get('error', 'not installed')}"]
    lines += ["", *_targets(r)]
    if r.get("stream"):  # pasted from benchmarks/bench_stream.py (its own command)
        lines += ["", "Streaming (`benchmarks/bench_stream.py`, peak RSS above the imports):", ""]
        lines += [f"    {line}" for line in r["stream"]]
    lines += ["", r["note"]]
    return "\n".join(lines)


def write_section(text: str) -> None:
    old = RESULTS_MD.read_text() if RESULTS_MD.exists() else ""
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + block + old[old.index(END) + len(END) :]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    RESULTS_MD.write_text(new)


NOTE = (
    "What the call does: the EK-FAC fit (a factor sweep and an eigenvalue sweep, each one "
    "batched backward pass per class, or one sampled probe above 200k hooked parameters), "
    "the eigendecompositions (a fixed cost, ~10 s for the CNN's 1,153-wide factors on one CPU "
    "thread), the leave-one-out sweep (one batched backward pass per class), the filtered "
    "model (one forward pass) and the noise-model fit; no stage runs an iterative solver. "
    "Every parameter of both models is hooked: Linear/Conv layers and the transformer's "
    "attention in- and out-projections are Kronecker-factored, norms and embedding tables "
    "(the position table through the token table's output gradients, checked against "
    "autograd before the fit) are exact diagonals from the same hooks; the K = 4 (C = 4) "
    "backward passes per batch of the expected Fisher and the leverage run as one vmapped "
    "pass. No per-example torch.func block is left (before 2026-12-02: 40,576 of the "
    "transformer's 74,628 parameters, most of its cost above the floor). On a GPU: "
    "`bash benchmarks/gpu.sh` (= `--device cuda --threads 4`, adds the CNN at 5k and the "
    "transformer at 20k rows; exits 2 when torch sees no CUDA device)."
)


def _write_scaling(
    args: argparse.Namespace,
    scaling: list[dict[str, Any]],
    stages: dict[str, Any],
    load_before: str,
    wall: float,
) -> None:
    """``--only scaling``: print its table, replace only the json's scaling rows."""
    run = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python " + " ".join(["benchmarks/bench_real_models.py", *sys.argv[1:]]),
        "load_before": load_before,
        "load": " / ".join(f"{v:.1f}" for v in os.getloadavg()),
        "wall_seconds": wall,
    }
    print("\n".join(_cost_rows(scaling)))
    for c in scaling:
        if "error" not in c:
            print(
                f"n={c['n']:,}: peak RSS {c['peak_rss_mb']:.0f} MB (after the fit "
                f"{c['fit_peak_rss_mb']:.0f}, at the end {c['end_rss_mb']:.0f}, "
                f"baseline {c['baseline_rss_mb']:.0f})"
            )
    print(run)
    if args.no_write:
        return
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    old["scaling"], old["scaling_run"], old["scaling_stages"] = scaling, run, stages
    RESULTS.write_text(json.dumps(old, indent=2, default=float))
    print(f"wrote the scaling rows of {RESULTS} (RESULTS.md left alone)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller n (a smoke run)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (see benchmarks/gpu.sh)")
    ap.add_argument("--no-write", action="store_true", help="print only (no RESULTS.md/json)")
    ap.add_argument(
        "--only",
        choices=["scaling", "cost"],
        help="run only this part; its rows replace that part of the json (the other rows are "
        "kept) and RESULTS.md is left alone (print only)",
    )
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        what, *rest = args.child
        if what == "cost":
            out = cost_child(rest[0], int(rest[1]), args.device)
        elif what == "stages":
            out = stages_child(int(rest[0]))
        else:
            out = kronfluence_child(int(rest[0]))
        print(json.dumps(out, default=float))
        return
    load_before = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    t0 = time.perf_counter()
    common = ["--threads", str(args.threads), "--device", args.device]
    if args.quick:
        plan = [("resnet", 256), ("transformer", 256), ("transformer", 1000)]
        sweep = [5000, 10000]
    else:
        plan = [("resnet", 1000), ("resnet", 2000), ("transformer", 1000),
                ("transformer", 2000), ("transformer", 5000)]  # fmt: skip
        sweep = [5000, 10000, 20000, 50000]
    if args.device != "cpu" and not args.quick:
        plan += [("resnet", 5000), ("transformer", 20000)]
    cost = []
    for kind, n in plan if args.only in (None, "cost") else []:
        cost.append(run_child("--child", "cost", kind, str(n), *common))
        print("cost", cost[-1], flush=True)
    scaling = []
    for n in sweep if args.only != "cost" else []:
        scaling.append(run_child("--child", "cost", "mlp", str(n), *common))
        print("scaling", scaling[-1], flush=True)
    if args.only == "scaling":
        stages = run_child("--child", "stages", str(sweep[-1]), *common)
        for m in stages.get("marks", [stages]):
            print(m, flush=True)
        _write_scaling(args, scaling, stages, load_before, time.perf_counter() - t0)
        return
    kron: dict[str, Any] = {"error": "not run off the CPU"}
    if args.device == "cpu":
        kron = run_child("--child", "kron", "256" if args.quick else "512", *common)
        print("kronfluence", kron, flush=True)
    if args.only == "cost":  # replace the cost and Kronfluence rows, keep the scaling part
        old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        scaling = old.get("scaling", [])
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python " + " ".join(["benchmarks/bench_real_models.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {args.threads} torch thread(s), {os.cpu_count()} "
        f"cores (shared with other jobs), device {args.device}",
        "load_before": load_before,
        "load": " / ".join(f"{v:.1f}" for v in os.getloadavg()),
        "versions": _versions(),
        "cost": cost,
        "scaling": scaling,
        "kronfluence": kron,
        "wall_seconds": time.perf_counter() - t0,
        "note": NOTE,
    }
    text = markdown(result)
    print(text)
    if args.no_write:
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if args.only == "cost":
        result = {**old, **{k: v for k, v in result.items() if k != "scaling"}}
        RESULTS.write_text(json.dumps(result, indent=2, default=float))
        print(f"wrote the cost and Kronfluence rows of {RESULTS} (RESULTS.md left alone)")
        return
    RESULTS.write_text(json.dumps(result, indent=2, default=float))
    write_section(text)
    print(f"wrote {RESULTS} and the section of {RESULTS_MD} in {result['wall_seconds']:.0f}s")


if __name__ == "__main__":
    main()
