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

``--leverage``: at the weight-decay damping, the leave-one-out step's leverage correction
``(I - L_i M_i / n)^{-1}`` against variants, on the grid's networks with seeds 100-101: the
correction's eigenvalues (of the symmetric ``K = M^{1/2} L M^{1/2} / n``) clipped at 0.5 /
0.8 / 0.95, and no correction (the plain Newton step ``M r / n``). With an approximate
curvature (EK-FAC) ``H`` can fall below a row's own ``H_i / n`` and ``K`` exceed 1, where the
correction turns the step around. Writes ``benchmarks/results/loo_leverage.json``
(about 3 minutes). With ``--trust`` each run also checks the plain step against the network
itself, the product's trust-region test for the filter step applied to leave-one-out: on 32
seeded rows, the mean total variation between the linearized ``z_i + t M_i r_i / n`` and the
network run at ``theta + t H^{-1} g_i / n``, for ``t = 1, 1/2, ..., 1/128``, and the count at
the largest ``t`` within the filter's tolerance (0.05).

``--step``: the plain leave-one-out step ``z_i + t M_i r_i / n`` shortened by a scalar
``t = 2^{-k/2}`` (1 down to 1/128) on the same networks and seeds as ``--leverage``: per
``t`` the expected count, clean rows below 0.01 and the leave-one-out loss's AP; and two
rules that would pick ``t`` from the evaluation rows. "add-one-in": add each evaluation row
to the training data with the same (sign-reversed, leverage-corrected) step at ``t`` and
take the ``t`` whose median probability of the evaluation row's own label matches the
training rows' in-sample median; "estimated accuracy": the ``t`` at which the noise model's
posterior-weighted accuracy of the calibrated leave-one-out prediction on the training
rows' true labels equals the calibrated accuracy on the evaluation rows. Writes
``benchmarks/results/loo_step.json`` (about 1 minute).

``--head``: the count from an exact curvature of the last ``nn.Linear`` alone (the features
below it held fixed: a GLM on the penultimate layer, whose leave-one-out step is exact)
against the scan's (``auto``) curvature of every parameter, on the same networks and seeds
as ``--step``. Writes ``benchmarks/results/loo_head.json`` (about 1 minute).
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


LEVERAGE_VARIANTS = {"current": None, "clip0.5": 0.5, "clip0.8": 0.8, "clip0.95": 0.95}


def run_leverage(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch
    from infgate.detect import approximate_loo
    from infgate.detect import loo as loo_module
    from infgate.detect.calibrate import fit_noise_model
    from infgate.detect.eval_influence import eval_probabilities
    from infgate.examples.networks import TrainOptions, flip_labels, train_network
    from infgate.influence import InfluenceScorer
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
    scorer = InfluenceScorer(model, (x, y), damping=grid.WD, progress=False)
    probs: dict[str, list[np.ndarray]] = {v: [] for v in [*LEVERAGE_VARIANTS, "none"]}
    top_eig: list[np.ndarray] = []
    traces: list[np.ndarray] = []
    original = loo_module._loo_batch

    def variants(engine: Any, backend: Any, n: int, start: int, xb: Any, yb: Any) -> Any:
        piece = loo_module.leverage_backend(backend).output_leverage(
            engine, start, xb, yb, loo_module._ce_residual(yb)
        )
        logits = piece.logits.double()
        p = torch.softmax(logits, 1)
        r = loo_module._ce_residual(yb)(logits).unsqueeze(2)
        lev = 0.5 * (piece.leverage + piece.leverage.transpose(1, 2)).double()
        cov = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
        w, v = torch.linalg.eigh(lev)
        root = v @ torch.diag_embed(w.clamp_min(0.0).sqrt()) @ v.transpose(1, 2)
        kw, kv = torch.linalg.eigh(root @ cov @ root / n)
        top_eig.append(kw[:, -1].numpy())
        traces.append(kw.sum(1).numpy())
        eye = torch.eye(p.shape[1], dtype=torch.float64)
        for name, cap in LEVERAGE_VARIANTS.items():
            if cap is None:
                delta = lev @ torch.linalg.solve(eye - cov @ lev / n, r)
            else:
                inv = kv @ torch.diag_embed(1.0 / (1.0 - kw.clamp(max=cap))) @ kv.transpose(1, 2)
                delta = root @ inv @ root @ r
            probs[name].append(torch.softmax(logits + delta.squeeze(2) / n, 1).numpy())
        probs["none"].append(torch.softmax(logits + (lev @ r).squeeze(2) / n, 1).numpy())
        return original(engine, backend, n, start, xb, yb)

    loo_module._loo_batch = variants  # type: ignore[assignment]
    try:
        loo = approximate_loo(scorer)
    finally:
        loo_module._loo_batch = original  # type: ignore[assignment]
    assert np.allclose(np.concatenate(probs["current"]), loo.loo_probs, atol=1e-6)
    reference = eval_probabilities(scorer, ev)
    assert reference is not None
    flipped = (y != y_clean).numpy()
    labels = y.numpy()
    rows = np.arange(len(labels))
    eig = np.concatenate(top_eig)
    # effective parameters the factored curvature claims, sum_k e_k / (e_k + damping), against
    # the most an exact curvature of n rows and C classes can have, n (C - 1)
    backend = scorer.backend
    eigen = [layer.eigenvalues.double().flatten() for layer in getattr(backend, "layers", [])]
    if getattr(backend, "block", None) is not None:
        eigen.append(backend.block.diag.double().flatten())
    dof = float(sum((e / (e + backend.damping)).sum() for e in eigen).item()) if eigen else None
    out = {}
    for name, parts in probs.items():
        q = np.concatenate(parts)
        p_given = q[rows, labels]
        out[name] = {
            "expected_errors": float(
                fit_noise_model(q, labels, reference=reference).expected_errors
            ),
            "clean_rows_below_0.01": int(((p_given < 0.01) & ~flipped).sum()),
            "loo_loss_ap": float(average_precision_score(flipped, -p_given))
            if flipped.any()
            else None,
        }
    trust = _plain_step_trust(scorer, x, y, probs["none"], loo.probs, labels, reference)
    print(cfg, "done", flush=True)
    return {
        **cfg,
        "n_flipped": int(flipped.sum()),
        "back_end": scorer.backend.name,
        "plain_step_trust": trust,
        "largest_K_eigenvalue": {
            "median": float(np.median(eig)),
            "share_above_1": float((eig > 1).mean()),
        },
        "sum_trace_K": float(np.concatenate(traces).sum()),
        "effective_parameters": dof,
        "rank_bound_n_times_C_minus_1": len(labels) * (k - 1),
        "variants": out,
    }


TRUST_FRACTIONS = tuple(0.5**k for k in range(8))


def _plain_step_trust(
    scorer: Any,
    x: Any,
    y: Any,
    plain: list[np.ndarray],
    insample: np.ndarray,
    labels: np.ndarray,
    reference: Any,
) -> dict[str, Any] | None:
    """The filter's trust-region test on the plain leave-one-out step (``--trust`` only)."""
    import torch
    from infgate.detect.calibrate import fit_noise_model
    from infgate.detect.filtered import TRUST_TOLERANCE

    if "--trust" not in sys.argv[1:]:
        return None
    engine, n = scorer.engine, len(labels)
    logits = np.log(np.clip(insample, 1e-300, 1.0))
    delta = np.log(np.clip(np.concatenate(plain), 1e-300, 1.0)) - logits  # softmax-invariant
    rows = np.random.default_rng(0).choice(n, 32, replace=False)
    xs, ys = x[torch.as_tensor(rows)], y[torch.as_tensor(rows)]
    grads = engine.per_example_grads(0, xs, ys)
    step = scorer.backend.solve(grads).double() / n
    theta = engine.flatten(engine.params).double()
    tv = {}
    with torch.no_grad():
        for t in TRUST_FRACTIONS:
            total = 0.0
            for j, row in enumerate(rows):
                params = engine.unflatten((theta + t * step[j]).to(engine.device, engine.dtype))
                net = torch.softmax(engine.forward(params, xs[j : j + 1]).double()[0], 0)
                lin = torch.softmax(torch.as_tensor(logits[row] + t * delta[row]), 0)
                total += float(0.5 * (lin - net).abs().sum())
            tv[t] = total / len(rows)
    pick = next((t for t in TRUST_FRACTIONS if tv[t] <= TRUST_TOLERANCE), 0.0)
    z = logits + pick * delta
    q = np.exp(z - z.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    count = float(fit_noise_model(q, labels, reference=reference).expected_errors)
    return {"tv_by_fraction": tv, "trusted_fraction": pick, "expected_errors_at_it": count}


def main_leverage() -> None:
    configs = [
        {"network": kind, "noise": noise, "seed": seed}
        for kind in grid.NETWORKS
        for noise in ("clean", "uniform_0.1", "uniform_0.2")
        for seed in (100, 101)
    ]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:
        rows = list(pool.map(run_leverage, configs))
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_seconds": time.perf_counter() - t0,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "loo_leverage.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    for r in rows:
        print(
            r["network"],
            r["noise"],
            r["seed"],
            r["back_end"],
            r["largest_K_eigenvalue"],
            "sum tr K",
            round(r["sum_trace_K"], 1),
            "effective parameters",
            r["effective_parameters"],
            "rank bound",
            r["rank_bound_n_times_C_minus_1"],
        )
        if r["plain_step_trust"] is not None:
            print("   plain-step trust:", r["plain_step_trust"])
        for name, v in r["variants"].items():
            print(
                "  ", name, {k: (round(x, 3) if isinstance(x, float) else x) for k, x in v.items()}
            )


STEP_FRACTIONS = tuple(0.5 ** (k / 2) for k in range(15))


def run_step(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch
    from infgate.detect import approximate_loo
    from infgate.detect import loo as loo_module
    from infgate.detect.calibrate import fit_noise_model
    from infgate.detect.eval_influence import eval_probabilities
    from infgate.examples.networks import TrainOptions, flip_labels, train_network
    from infgate.influence import InfluenceScorer
    from sklearn.metrics import average_precision_score

    torch.set_num_threads(1)
    kind, seed = cfg["network"], cfg["seed"]
    x_all, y_all, k = grid._network_data(kind, seed)
    x, y_clean = x_all[: grid.NET_N], y_all[: grid.NET_N]
    xe, ye = x_all[grid.NET_N :], y_all[grid.NET_N :]
    if cfg["noise"] == "clean":
        y = y_clean.clone()
    else:
        y, _ = flip_labels(y_clean, float(cfg["noise"].split("_")[1]), classes=k, seed=seed)
    opts = TrainOptions(epochs=grid.NET_EPOCHS, lr=3e-3, weight_decay=grid.WD, seed=seed)
    model = train_network(grid._network(kind, k, seed), x, y, opts)
    scorer = InfluenceScorer(model, (x, y), damping=grid.WD, progress=False)
    n = len(y)

    def pieces(xb: Any, yb: Any) -> tuple[Any, Any, Any, Any]:
        piece = loo_module.leverage_backend(scorer.backend).output_leverage(
            scorer.engine, 0, xb, yb, loo_module._ce_residual(yb)
        )
        z = piece.logits.double()
        lev = 0.5 * (piece.leverage + piece.leverage.transpose(1, 2)).double()
        p = torch.softmax(z, 1)
        cov = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
        return z, lev, loo_module._ce_residual(yb)(z).unsqueeze(2), cov

    z0, lev, r, _ = pieces(x, y)
    plain = (lev @ r).squeeze(2).numpy() / n
    ze, leve, re, cove = pieces(xe, ye)
    reference = eval_probabilities(scorer, (xe, ye))
    assert reference is not None
    labels, el = y.numpy(), ye.numpy()
    rows, erows = np.arange(n), np.arange(len(el))
    flipped = labels != y_clean.numpy()
    insample = torch.softmax(z0, 1).numpy()[rows, labels]
    eye = torch.eye(k, dtype=torch.float64)
    current = approximate_loo(scorer).loo_probs
    base = fit_noise_model(current, labels, reference=reference)
    assert base.scaling is not None
    eval_acc = float((base.scaling.apply(reference[0]).argmax(1) == el).mean())
    by_t = []
    for t in STEP_FRACTIONS:
        zt = z0.numpy() + t * plain
        q = np.exp(zt - zt.max(1, keepdims=True))
        q /= q.sum(1, keepdims=True)
        nm = fit_noise_model(q, labels, reference=reference)
        assert nm.scaling is not None
        est_acc = float(nm.posterior[rows, nm.scaling.apply(q).argmax(1)].mean())
        added = ze - (t * torch.linalg.solve(eye + t * leve @ cove / n, leve @ re)).squeeze(2) / n
        q_add = torch.softmax(added, 1).numpy()[erows, el]
        p_given = q[rows, labels]
        by_t.append(
            {
                "t": t,
                "expected_errors": float(nm.expected_errors),
                "clean_rows_below_0.01": int(((p_given < 0.01) & ~flipped).sum()),
                "loo_loss_ap": float(average_precision_score(flipped, -p_given))
                if flipped.any()
                else None,
                "add_one_in_median": float(np.median(q_add)),
                "estimated_accuracy": est_acc,
            }
        )
    target = float(np.median(insample))
    add_pick = min(by_t, key=lambda b: abs(b["add_one_in_median"] - target))
    acc_pick = min(by_t, key=lambda b: abs(b["estimated_accuracy"] - eval_acc))
    print(cfg, "done", flush=True)
    return {
        **cfg,
        "n_flipped": int(flipped.sum()),
        "back_end": scorer.backend.name,
        "count_current": float(base.expected_errors),
        "insample_median": target,
        "eval_accuracy_calibrated": eval_acc,
        "by_t": by_t,
        "add_one_in_pick": {"t": add_pick["t"], "count": add_pick["expected_errors"]},
        "estimated_accuracy_pick": {"t": acc_pick["t"], "count": acc_pick["expected_errors"]},
    }


def main_step() -> None:
    configs = [
        {"network": kind, "noise": noise, "seed": seed}
        for kind in grid.NETWORKS
        for noise in ("clean", "uniform_0.1", "uniform_0.2")
        for seed in (100, 101)
    ]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:
        rows = list(pool.map(run_step, configs))
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_seconds": time.perf_counter() - t0,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "loo_step.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    for r in rows:
        counts = ", ".join(f"{b['t']:.3g}: {b['expected_errors']:.0f}" for b in r["by_t"][::2])
        print(
            f"{r['network']} {r['noise']} s{r['seed']} ({r['back_end']}) flips {r['n_flipped']}"
            f" now {r['count_current']:.0f}; by t {counts}; add-one-in picks "
            f"{r['add_one_in_pick']}, estimated accuracy picks {r['estimated_accuracy_pick']}"
        )


def run_head(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch
    from infgate.detect import approximate_loo
    from infgate.detect.calibrate import fit_noise_model
    from infgate.detect.eval_influence import eval_probabilities
    from infgate.examples.networks import TrainOptions, flip_labels, train_network
    from infgate.influence import InfluenceScorer
    from torch import nn

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
    model = train_network(grid._network(kind, k, seed), x, y, opts).eval()
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    out: dict[str, Any] = {**cfg, "n_flipped": int((y != y_clean).sum())}
    for name, kw in (("all", {}), ("head", {"method": "exact", "params": [head]})):
        t0 = time.perf_counter()
        scorer = InfluenceScorer(model, (x, y), damping=grid.WD, progress=False, **kw)
        loo = approximate_loo(scorer)
        reference = eval_probabilities(scorer, ev)
        noise = fit_noise_model(loo.loo_probs, y.numpy(), reference=reference)
        out[name] = {
            "back_end": scorer.backend.name,
            "parameters": scorer.engine.n_params,
            "expected_errors": float(noise.expected_errors),
            "seconds": time.perf_counter() - t0,
        }
    print(cfg, "done", flush=True)
    return out


def main_head() -> None:
    configs = [
        {"network": kind, "noise": noise, "seed": seed}
        for kind in grid.NETWORKS
        for noise in ("clean", "uniform_0.1", "uniform_0.2")
        for seed in (100, 101)
    ]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:
        rows = list(pool.map(run_head, configs))
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_seconds": time.perf_counter() - t0,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "loo_head.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    for r in rows:
        print(
            f"{r['network']} {r['noise']} s{r['seed']} flips {r['n_flipped']}: count "
            f"{r['all']['expected_errors']:.1f} ({r['all']['back_end']}, "
            f"{r['all']['parameters']} params) vs head only {r['head']['expected_errors']:.1f} "
            f"({r['head']['parameters']} params)"
        )


def main() -> None:
    if "--head" in sys.argv[1:]:
        main_head()
        return
    if "--step" in sys.argv[1:]:
        main_step()
        return
    if "--leverage" in sys.argv[1:]:
        main_leverage()
        return
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
