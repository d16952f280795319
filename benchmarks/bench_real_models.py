"""Real models: the default label-error search vs the per-example-gradient floor, memory,
Kronfluence side by side, and ranking quality with planted label noise.

One command (``python benchmarks/bench_real_models.py``; ``--quick`` for smaller n) prints a
table, writes ``benchmarks/results/real_models.json`` and replaces the "Real models" section
of ``benchmarks/RESULTS.md``:

* cost: on the 1.2M-parameter ResNet-style CNN (digits, 8x8; tiled with pixel noise beyond
  1,797 rows) and on the transformer classifier (generated tokens), the whole default
  ``find_label_errors(..., influence_method="auto")`` time over the floor (ONE vectorized
  per-example-gradient sweep over the same data, ``torch.func.vmap(grad)``), and peak
  resident memory, each n in a fresh process;
* Kronfluence's EK-FAC ``compute_self_scores`` on the same CNN and data (when installed),
  time and Spearman against infgate's EK-FAC self-influence;
* average precision with 10% uniformly flipped labels for the default ranking, the in-sample
  loss and plain self-influence, on the CNN, the 1-D CNN and the transformer.
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
import torch.nn.functional as F
from infgate.detect import find_label_errors
from infgate.examples.networks import (
    TrainOptions,
    digits_images,
    flip_labels,
    make_network,
    token_sequences,
    train_network,
    wave_sequences,
)
from infgate.influence import InfluenceScorer
from infgate.influence.gradients import GradientEngine
from infgate.influence.objective import CrossEntropyObjective
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score
from torch import nn

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "real_models.json"
RESULTS_MD = HERE / "RESULTS.md"
BATCH = 128
BEGIN, END = "<!-- real_models:begin -->", "<!-- real_models:end -->"


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def data_for(kind: str, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(x, y, classes)`` for a model family."""
    if kind == "resnet":
        x, y = digits_images()
        reps = -(-n // len(x))
        g = torch.Generator().manual_seed(seed)
        x = x.repeat(reps, 1, 1, 1)[:n]
        x = x + 0.05 * torch.randn(x.shape, generator=g) * (torch.arange(n) >= 1797).view(
            -1, 1, 1, 1
        )
        return x, y.repeat(reps)[:n], 10
    if kind == "transformer":
        x, y = token_sequences(n, vocab=50, length=24, classes=4, seed=seed)
        return x, y, 4
    x, y = wave_sequences(n, length=64, classes=4, seed=seed)
    return x, y, 4


def model_for(kind: str, classes: int, seed: int = 0) -> nn.Module:
    if kind == "transformer":
        return make_network(kind, seed=seed, vocab=50, classes=classes)
    return make_network(kind, seed=seed, classes=classes)


def _train(kind: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> None:
    lr = 3e-3 if kind != "resnet" else 1e-3
    train_network(model, x, y, TrainOptions(epochs=epochs, lr=lr, batch_size=64))


def floor_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """One vmap(grad) per-example-gradient sweep over the data (gradients discarded)."""
    eng = GradientEngine(model, CrossEntropyObjective(), device=torch.device("cpu"))
    t0 = time.perf_counter()
    for i in range(0, len(x), BATCH):
        eng.per_example_grads(i, x[i : i + BATCH], y[i : i + BATCH])
    return time.perf_counter() - t0


def cost_child(kind: str, n: int) -> dict[str, Any]:
    x, y, k = data_for(kind, n)
    model = model_for(kind, k)
    _train(kind, model, x, y, epochs=1)  # the cost does not depend on how well it fits
    base = _rss_mb()
    floor = floor_seconds(model, x, y)
    t0 = time.perf_counter()
    df = find_label_errors(model, (x, y), influence_method="auto", batch_size=BATCH, progress=False)
    total = time.perf_counter() - t0
    return {
        "model": kind,
        "params": sum(p.numel() for p in model.parameters()),
        "n": n,
        "floor_s": floor,
        "find_label_errors_s": total,
        "ratio": total / floor,
        "peak_rss_mb": _peak_rss_mb(),
        "baseline_rss_mb": base,
        "rows": len(df),
    }


def run_child(*args: str) -> dict[str, Any]:
    res = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        return {"args": list(args), "error": res.stderr.strip().splitlines()[-1][:300]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def kronfluence_child(n: int) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    from bench_backends_peers import kronfluence_run

    x, y, k = data_for("resnet", n)
    model = model_for("resnet", k)
    _train("resnet", model, x, y, epochs=1)
    lam = 1e-3
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
        "infgate_ekfac_s": ours_s,
        "kronfluence_ekfac_s": theirs_s,
        "spearman": float(spearmanr(ours, theirs)[0]),
    }


def ap_run(kind: str, n: int, seed: int, epochs: int) -> dict[str, Any]:
    x, y, k = data_for(kind, n, seed=seed)
    noisy, mask = flip_labels(y, 0.1, classes=k, seed=seed)
    model = model_for(kind, k, seed=seed)
    _train(kind, model, x, noisy, epochs=epochs)
    t0 = time.perf_counter()
    df = find_label_errors(
        model, (x, noisy), influence_method="auto", batch_size=BATCH, progress=False
    )
    seconds = time.perf_counter() - t0
    df = df.assign(row=df["example_id"].astype(int)).sort_values("row")
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + BATCH]) for i in range(0, n, BATCH)])
    loss = F.cross_entropy(logits.double(), noisy, reduction="none").numpy()
    return {
        "model": kind,
        "n": n,
        "seed": seed,
        "train_accuracy_given": float((logits.argmax(1) == noisy).float().mean()),
        "ap_default": float(average_precision_score(mask, df["score"].to_numpy())),
        "ap_loss": float(average_precision_score(mask, loss)),
        "ap_self_influence": float(average_precision_score(mask, df["self_influence"].to_numpy())),
        "seconds": seconds,
    }


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("numpy", "kronfluence", "scikit-learn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "## Real models (`benchmarks/bench_real_models.py`)",
        "",
        f"{r['date']}, `{r['command']}`; {r['machine']}; "
        + ", ".join(f"{k} {v}" for k, v in r["versions"].items())
        + f". Load average during the run: {r['load']}.",
        "",
        "| model (params) | n | floor s (one vmap(grad) sweep) | find_label_errors s (auto) "
        "| x floor | peak RSS MB (baseline) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in r["cost"]:
        if "error" in c:
            lines.append(f"| {' '.join(c['args'])} | | | fails: {c['error'][:80]} | | |")
            continue
        lines.append(
            f"| {c['model']} ({c['params']:,}) | {c['n']:,} | {c['floor_s']:.1f} | "
            f"{c['find_label_errors_s']:.1f} | {c['ratio']:.1f} | "
            f"{c['peak_rss_mb']:.0f} ({c['baseline_rss_mb']:.0f}) |"
        )
    k = r.get("kronfluence")
    if k and "error" not in k:
        lines += [
            "",
            f"Kronfluence EK-FAC on the CNN, n={k['n']}: {k['kronfluence_ekfac_s']:.1f} s "
            f"(fit_all_factors + compute_self_scores) vs infgate EK-FAC "
            f"{k['infgate_ekfac_s']:.1f} s (fit + self-influence, sampled Fisher); Spearman "
            f"{k['spearman']:.3f}.",
        ]
    elif k:
        lines += ["", f"Kronfluence: {k.get('error', 'not installed')}"]
    lines += [
        "",
        "| model | n | seeds | AP default | AP in-sample loss | AP self-influence |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in sorted({a["model"] for a in r["ap"] if "model" in a}):
        rows = [a for a in r["ap"] if a.get("model") == kind]
        mean = {
            m: np.mean([a[m] for a in rows]) for m in ("ap_default", "ap_loss", "ap_self_influence")
        }
        lines.append(
            f"| {kind} | {rows[0]['n']} | {len(rows)} | {mean['ap_default']:.3f} | "
            f"{mean['ap_loss']:.3f} | {mean['ap_self_influence']:.3f} |"
        )
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller n and one seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        what, *rest = args.child
        if what == "cost":
            out = cost_child(rest[0], int(rest[1]))
        elif what == "kron":
            out = kronfluence_child(int(rest[0]))
        else:
            out = ap_run(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
        print(json.dumps(out, default=float))
        return
    t0 = time.perf_counter()
    sizes = [256, 512] if args.quick else [512, 1024]
    cost = []
    for kind in ("resnet", "transformer"):
        for n in sizes:
            cost.append(run_child("--child", "cost", kind, str(n), "--threads", str(args.threads)))
            print("cost", cost[-1], flush=True)
    kron = run_child("--child", "kron", str(sizes[0]), "--threads", str(args.threads))
    print("kronfluence", kron, flush=True)
    seeds = [0] if args.quick else [0, 1]
    aps = []
    for kind, n, epochs in (("resnet", 300, 8), ("conv1d", 600, 30), ("transformer", 600, 30)):
        for seed in seeds:
            aps.append(
                run_child("--child", "ap", kind, str(n), str(seed), str(epochs), "--threads",
                          str(args.threads))
            )  # fmt: skip
            print("ap", aps[-1], flush=True)
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python " + " ".join(["benchmarks/bench_real_models.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {args.threads} torch threads, {os.cpu_count()} cores "
        "(shared with other jobs)",
        "load": " / ".join(f"{v:.1f}" for v in os.getloadavg()),
        "versions": _versions(),
        "cost": cost,
        "kronfluence": kron,
        "ap": aps,
        "wall_seconds": time.perf_counter() - t0,
        "note": (
            "n is small because this 2-core machine is shared (load average above): the "
            "5k -> 50k sweep and the 1M-parameter peak at scale were not run here. "
            "The floor is one vmap(grad) sweep; find_label_errors fits EK-FAC (two sweeps), "
            "runs the leave-one-out sweep (one batched backward per class) and the filtered "
            "model (one forward), so its fixed eigendecompositions dominate at small n and "
            "the ratio falls as n grows. The 1-D CNN (10,820 parameters) runs the "
            "exact back-end under auto; there the default ranking loses to the in-sample loss "
            "(reported to the ranking owner, issue 12)."
        ),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, default=float))
    text = markdown(result)
    write_section(text)
    print(text)
    print(f"wrote {RESULTS} and the section of {RESULTS_MD} in {result['wall_seconds']:.0f}s")


if __name__ == "__main__":
    main()
