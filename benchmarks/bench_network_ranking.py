"""Label-error ranking on networks: every ranking from ONE curvature fit, 10% uniform flips.

Trains the network families of :mod:`infgate.examples.networks` on their data with 10%
uniformly flipped labels, fits ``InfluenceScorer(method="auto")`` once per run and scores
every ranking from it (no retraining). Reports mean average precision per family and,
paired by seed, the default ranking's wins against the in-sample loss and plain
self-influence with a two-sided Wilcoxon signed-rank p-value (and the sign test).

Commands (what ``benchmarks/RESULTS.md`` reports; 1 torch thread each)::

    python benchmarks/bench_network_ranking.py --only resnet,conv1d > a.log
    python benchmarks/bench_network_ranking.py --only transformer > b.log
    python benchmarks/bench_network_ranking.py --only resnet64 > c.log
    python benchmarks/bench_network_ranking.py --tabular held_out > t.log
    python benchmarks/bench_network_ranking.py --tabular dev > d.log
    python benchmarks/bench_network_ranking.py --from-logs a.log b.log c.log t.log d.log

(the last writes ``benchmarks/results/network_ranking.json``); plain
``python benchmarks/bench_network_ranking.py`` runs every family in one process and writes
the networks alone; ``--dev`` prints the development seeds.

Every run also draws 300 clean labelled evaluation rows from the same source
(:func:`eval_for`; the tabular check uses its 25% test split), as a scan with evaluation
data has them. Rankings: ``default`` (what ``find_label_errors(eval_data=...)`` ranks by,
from the same pieces: ``filtered_evidence``, the filtered model's posterior times the
calibrated posterior of each row's nearest evaluation rows; without evaluation data it is
``filtered_margin``, which ``tests/detect/test_ranking_networks.py`` checks against
``find_label_errors``), ``loss``, ``margin``,
``self_influence``, ``loo_margin`` (approximate leave-one-out margin), ``old_default`` (the
default before: strength 0.1, the whole step run through the network),
``filtered_margin_forward`` (strength 1, the whole step run through the network),
``filtered_margin_linearized`` (strength 1, the whole step in the linearization),
``filtered_margin`` (the trust region; the default without evaluation data, and before
the evaluation evidence), ``filtered_margin_s0.1`` / ``_s10``
(the trust region at other strengths), ``neighbours`` (penultimate-layer kNN label
disagreement), ``filtered_neighbours(_forward)`` / ``loss_neighbours`` (rank averages with
it), ``filtered_loss``.

Families (each ``n`` examples, trained with Adam, batch 64):

* ``resnet``: the ResNet-style CNN (BatchNorm, Dropout, residual stages) at width 16
  (75k parameters instead of 1.2M at width 64, so 5 seeds fit the 1-thread budget; EK-FAC
  under ``auto``) on the bundled 8x8 digits, few epochs;
* ``resnet64``: the same CNN at its full width 64 (1.2M parameters), few epochs;
* ``conv1d``: the 1-D CNN at width 16 (2,900 parameters instead of 10,820 at the default
  width 32: the exact back-end's dense solves at 10,820 cost minutes per run on this shared
  box; exact under ``auto`` either way) on noisy waves, few epochs and to convergence;
* ``transformer``: the transformer-encoder classifier (EK-FAC under ``auto``) on
  generated token sequences, few epochs and to convergence;
* tabular MLPs and softmax regression are the grid of ``benchmarks/bench_label_errors.py``
  (the tabular check of the RESULTS section imports its data and noise).

Seeds: the development seeds (100, 101) are where the default was chosen (``--dev``
prints them); the reported seeds 0-4 were not looked at before the choice.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from infgate.detect.calibrate import fit_noise_model
from infgate.detect.eval_influence import eval_probabilities
from infgate.detect.filtered import evaluate_filter, filter_step
from infgate.detect.label_errors import (
    DEFAULT_METHOD,
    _evaluation_neighbours,
    channel_rule,
    ranking_scores,
)
from infgate.detect.loo import approximate_loo
from infgate.detect.neighbours import neighbour_disagreement, penultimate_features
from infgate.detect.stats import rank_average
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
from scipy.stats import binomtest, wilcoxon
from sklearn.metrics import average_precision_score

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "network_ranking.json"
BATCH = 128
DEV_SEEDS = (100, 101)
REPORT_SEEDS = (0, 1, 2, 3, 4)

#: (family label, kind, n, epochs, until_converged, lr)
CONFIGS: tuple[tuple[str, str, int, int, bool, float], ...] = (
    ("resnet-16 few-epoch", "resnet", 600, 8, False, 1e-3),
    ("conv1d few-epoch", "conv1d", 600, 10, False, 3e-3),
    ("conv1d converged", "conv1d", 600, 60, True, 3e-3),
    ("transformer few-epoch", "transformer", 600, 10, False, 3e-3),
    ("transformer converged", "transformer", 600, 60, True, 3e-3),
    ("resnet-64 few-epoch", "resnet64", 600, 8, False, 1e-3),
)

METHODS = (
    "default",
    "loss",
    "margin",
    "self_influence",
    "loo_margin",
    "filtered_margin_forward",
    "filtered_margin_linearized",
    "filtered_margin",
    "neighbours",
    "filtered_neighbours_forward",
    "filtered_neighbours",
    "loss_neighbours",
    "filtered_loss",
    "old_default",
    "filtered_margin_s0.1",
    "filtered_margin_s10",
    "filtered_channel",
)
#: other filter strengths compared with the default's (lambda' / mean eigenvalue of H).
CANDIDATE_STRENGTHS = (10.0,)


def data_for(kind: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(x, y, classes)``: a seeded subsample of digits, or generated waves / tokens."""
    if kind in ("resnet", "resnet64", "mlp"):
        x, y = digits_images()
        rows = np.random.default_rng(seed).permutation(len(x))[:n]
        x, y = x[rows], y[rows]
        return (x if kind != "mlp" else x.flatten(1)), y, 10
    if kind == "transformer":
        x, y = token_sequences(n, vocab=50, length=24, classes=4, seed=seed)
        return x, y, 4
    x, y = wave_sequences(n, length=64, classes=4, seed=seed)
    return x, y, 4


EVAL_ROWS = 300  # labelled evaluation rows drawn beside the training rows (clean labels)


def eval_for(kind: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean labelled evaluation rows from the same source, disjoint from the training rows:
    the digits rows after the training rows in the same permutation, or a fresh draw of the
    generator (another seed)."""
    if kind in ("resnet", "resnet64", "mlp"):
        x, y = digits_images()
        rows = np.random.default_rng(seed).permutation(len(x))[n : n + EVAL_ROWS]
        x, y = x[rows], y[rows]
        return (x if kind != "mlp" else x.flatten(1)), y
    if kind == "transformer":
        return token_sequences(EVAL_ROWS, vocab=50, length=24, classes=4, seed=seed + 10_000)
    return wave_sequences(EVAL_ROWS, length=64, classes=4, seed=seed + 10_000)


def evaluation_evidence(
    model: torch.nn.Module, scorer: InfluenceScorer, out: Any, eval_pair: Any
) -> tuple[np.ndarray | None, float | None]:
    """What ``find_label_errors(eval_data=eval_pair)`` multiplies the filtered model by:
    the training rows' calibrated evaluation-neighbour posterior (and how often the
    evaluation rows' own left-out vote is right)."""
    noise = fit_noise_model(
        out.loo_probs, out.labels, reference=eval_probabilities(scorer, eval_pair)
    )
    nbrs = _evaluation_neighbours(
        model, scorer, None, eval_pair, noise, out.loo_probs.shape[1], None
    )
    if nbrs is None:
        return None, None
    return nbrs.calibrated(), nbrs.accuracy


def model_for(kind: str, classes: int, seed: int) -> torch.nn.Module:
    if kind == "transformer":
        return make_network(kind, seed=seed, vocab=50, classes=classes)
    if kind in ("resnet", "resnet64"):
        width = 64 if kind == "resnet64" else 16
        return make_network("resnet", seed=seed, classes=classes, width=width)
    if kind == "mlp":
        return make_network(kind, seed=seed, in_features=64, classes=classes, hidden=(32,))
    return make_network(kind, seed=seed, classes=classes, width=16)


def _margin(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    idx = np.arange(len(labels))
    others = probs.copy()
    others[idx, labels] = -np.inf
    return others.max(axis=1) - probs[idx, labels]


def run_one(
    family: str, kind: str, n: int, epochs: int, converge: bool, lr: float, seed: int
) -> dict[str, Any]:
    """Train one network with planted flips; AP of every ranking from one curvature fit."""
    x, y, k = data_for(kind, n, seed)
    noisy, mask = flip_labels(y, 0.1, classes=k, seed=seed)
    model = model_for(kind, k, seed)
    wd = 1e-4
    opts = TrainOptions(
        epochs=epochs, lr=lr, batch_size=64, weight_decay=wd, until_converged=converge, seed=seed
    )
    torch.manual_seed(seed)  # dropout draws from the global generator during training
    t0 = time.perf_counter()
    train_network(model, x, noisy, opts)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scorer = InfluenceScorer(
        model, (x, noisy), method="auto", damping=wd, batch_size=BATCH, progress=False
    )
    out = approximate_loo(scorer)
    labels = out.labels
    step = filter_step(scorer)
    fwd = evaluate_filter(scorer, step, mode="forward").probs
    lin = evaluate_filter(scorer, step, mode="linearized").probs
    trusted = evaluate_filter(scorer, step, mode="trusted")
    nb = neighbour_disagreement(penultimate_features(model, scorer.train), labels)
    seconds = time.perf_counter() - t0
    # what find_label_errors(model, (x, noisy), scorer=scorer) ranks by, from the same pieces
    # (tests/detect/test_ranking_networks.py checks the two agree)
    evidence, nb_accuracy = evaluation_evidence(model, scorer, out, eval_for(kind, n, seed))
    default_scores = ranking_scores(
        out, DEFAULT_METHOD, trusted.probs, neighbours=nb, evidence=evidence
    )
    noise = fit_noise_model(out.loo_probs, labels)  # what find_label_errors fits, no eval data
    loss = ranking_scores(out, "loss")
    scores = {
        "default": default_scores,
        "loss": loss,
        "margin": ranking_scores(out, "margin"),
        "self_influence": ranking_scores(out, "self_influence"),
        "loo_margin": ranking_scores(out, "loo_margin"),
        "filtered_margin_forward": _margin(fwd, labels),
        "filtered_margin_linearized": _margin(lin, labels),
        "filtered_margin": _margin(trusted.probs, labels),
        "neighbours": nb,
        "filtered_neighbours_forward": rank_average(_margin(fwd, labels), nb),
        "filtered_neighbours": rank_average(_margin(trusted.probs, labels), nb),
        "loss_neighbours": rank_average(loss, nb),
        "filtered_loss": ranking_scores(out, "filtered_loss", trusted.probs),
        "filtered_channel": ranking_scores(out, "filtered_channel", trusted.probs, noise=noise),
    }
    old_step = filter_step(scorer, 0.1)
    scores["old_default"] = _margin(evaluate_filter(scorer, old_step, mode="forward").probs, labels)
    scores["filtered_margin_s0.1"] = _margin(evaluate_filter(scorer, old_step).probs, labels)
    for strength in CANDIDATE_STRENGTHS:
        alt = evaluate_filter(scorer, filter_step(scorer, strength)).probs
        scores[f"filtered_margin_s{strength:g}"] = _margin(alt, labels)
    idx = np.arange(len(labels))
    return {
        "family": family,
        "seed": seed,
        "n": n,
        "params": sum(p.numel() for p in model.parameters()),
        "back_end": scorer.backend.name,
        "train_accuracy_given": float((out.probs.argmax(1) == labels).mean()),
        "flips_fitted": float((out.probs.argmax(1) == labels)[mask].mean()),
        "filtered_forward_accuracy_given": float((fwd.argmax(1) == labels).mean()),
        "filtered_linearized_accuracy_given": float((lin.argmax(1) == labels).mean()),
        "trusted_accuracy_given": float((trusted.probs.argmax(1) == labels).mean()),
        "step_fraction": trusted.step_fraction,
        "step_divergence": trusted.divergence,
        "channel_p_value": noise.channel_p_value,
        "ranking_rule": channel_rule(noise),
        "default_rule": "evidence" if evidence is not None else "margin",
        "neighbour_accuracy": nb_accuracy,
        "filtered_forward_p_given": float(fwd[idx, labels].mean()),
        "train_seconds": train_s,
        "rank_seconds": seconds,
        "ap": {m: float(average_precision_score(mask, scores[m])) for m in METHODS},
    }


def tabular_run(dataset: str, model: str, noise: str, seed: int) -> dict[str, Any]:
    """The tabular check on ``benchmarks/bench_label_errors.py``'s data, noise, models and
    training (imported, not changed): AP of the rankings that need no retraining."""
    sys.path.insert(0, str(HERE))
    import bench_label_errors as ble
    from infgate.examples.models import make_classifier, train_classifier
    from sklearn.model_selection import train_test_split

    hidden = (32,) if model == "mlp32" else ()
    x_all, y_all = ble.load(dataset)
    xtr, xte, y_clean, yte = train_test_split(
        x_all, y_all, test_size=0.25, stratify=y_all, random_state=seed
    )
    ytr = ble.noisy_labels(y_clean, noise, np.random.default_rng(seed), seed)
    flipped = ytr != y_clean
    k = int(y_all.max()) + 1
    xt, yt = torch.as_tensor(xtr), torch.as_tensor(ytr)
    net = make_classifier(
        xt.shape[1], k, hidden=hidden, generator=torch.Generator().manual_seed(seed)
    )
    train_classifier(net, xt, yt, weight_decay=ble.WD, max_iter=300 if hidden else 500)
    scorer = InfluenceScorer(net, (xt, yt), damping=ble.WD, progress=False)
    out = approximate_loo(scorer)
    labels = out.labels
    nb = neighbour_disagreement(penultimate_features(net, scorer.train), labels)
    old = evaluate_filter(scorer, filter_step(scorer, 0.1), mode="forward").probs
    trusted = evaluate_filter(scorer, filter_step(scorer))
    eval_pair = (torch.as_tensor(xte), torch.as_tensor(yte))
    evidence, _ = evaluation_evidence(net, scorer, out, eval_pair)
    scores = {
        "default": ranking_scores(
            out, DEFAULT_METHOD, trusted.probs, neighbours=nb, evidence=evidence
        ),
        "filtered_margin": _margin(trusted.probs, labels),
        "loss": ranking_scores(out, "loss"),
        "margin": ranking_scores(out, "margin"),
        "self_influence": out.self_influence,
        "neighbours": nb,
        "filtered_margin_forward_s0.1": _margin(old, labels),
        "filtered_neighbours": rank_average(_margin(trusted.probs, labels), nb),
    }
    noise_model = fit_noise_model(out.loo_probs, labels)
    scores["filtered_channel"] = ranking_scores(
        out, "filtered_channel", trusted.probs, noise=noise_model
    )
    return {
        "dataset": dataset,
        "model": model,
        "noise": noise,
        "seed": seed,
        "split": "dev" if dataset in ble.DEV else "held_out",
        "step_fraction": trusted.step_fraction,
        "channel_p_value": noise_model.channel_p_value,
        "ranking_rule": channel_rule(noise_model),
        "ap": {m: float(average_precision_score(flipped, v)) for m, v in scores.items()},
    }


TABULAR_METHODS = (
    "default",
    "filtered_margin",
    "loss",
    "margin",
    "self_influence",
    "neighbours",
    "filtered_margin_forward_s0.1",
    "filtered_neighbours",
    "filtered_channel",
)


def tabular_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split in ("dev", "held_out"):
        for model in ("softmax", "mlp32"):
            rs = [r for r in rows if r["split"] == split and r["model"] == model]
            if not rs:
                continue
            ap = {m: [r["ap"][m] for r in rs] for m in TABULAR_METHODS}
            out[f"{split} {model}"] = {
                "runs": len(rs),
                "mean_ap": {m: float(np.mean(v)) for m, v in ap.items()},
                "default_vs_loss": paired(ap["default"], ap["loss"]),
                "default_vs_self_influence": paired(ap["default"], ap["self_influence"]),
                "default_vs_old_default": paired(ap["default"], ap["filtered_margin_forward_s0.1"]),
                "default_vs_filtered_margin": paired(ap["default"], ap["filtered_margin"]),
            }
    return out


def paired(a: list[float], b: list[float]) -> dict[str, Any]:
    """Wins/losses/ties of ``a`` over ``b`` and the Wilcoxon and sign-test p-values."""
    d = np.asarray(a) - np.asarray(b)
    wins, losses = int((d > 1e-12).sum()), int((d < -1e-12).sum())
    p_w = float(wilcoxon(d).pvalue) if np.any(np.abs(d) > 1e-12) else 1.0
    p_s = float(binomtest(wins, wins + losses).pvalue) if wins + losses else 1.0
    return {"wins": wins, "losses": losses, "mean_diff": float(d.mean()), "wilcoxon_p": p_w,
            "sign_p": p_s}  # fmt: skip


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    families = list(dict.fromkeys(r["family"] for r in runs))
    for fam in [*families, "all"]:
        rs = [r for r in runs if fam in ("all", r["family"])]
        ap = {m: [r["ap"][m] for r in rs] for m in METHODS}
        out[fam] = {
            "runs": len(rs),
            "mean_ap": {m: float(np.mean(v)) for m, v in ap.items()},
            "default_vs_loss": paired(ap["default"], ap["loss"]),
            "default_vs_self_influence": paired(ap["default"], ap["self_influence"]),
            "default_vs_filtered_margin": paired(ap["default"], ap["filtered_margin"]),
        }
    return out


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    cols = [m for m in METHODS if m != "default"]
    head = "| family | runs | default | " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 3)]
    for fam, v in s.items():
        m = v["mean_ap"]
        lines.append(
            f"| {fam} | {v['runs']} | **{m['default']:.3f}** | "
            + " | ".join(f"{m[c]:.3f}" for c in cols)
            + " |"
        )
    lines += ["", "| family | default vs loss (W-L, mean diff, Wilcoxon p) | default vs "
              "self-influence | default vs filtered_margin (the default without evaluation "
              "data) |", "|---|---|---|---|"]  # fmt: skip
    for fam, v in s.items():
        cells = [
            f"{a['wins']}-{a['losses']}, {a['mean_diff']:+.3f}, p={a['wilcoxon_p']:.2g}"
            for a in (
                v["default_vs_loss"],
                v["default_vs_self_influence"],
                v["default_vs_filtered_margin"],
            )
        ]
        lines.append(f"| {fam} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


TABULAR_NOISE = ("uniform_0.1", "class_conditional_0.2")
TABULAR_SEEDS = (0, 1, 2)


def _lines(paths: list[str]) -> list[dict[str, Any]]:
    return [
        json.loads(x) for p in paths for x in Path(p).read_text().splitlines() if x.startswith("{")
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="reported seeds 0-1 only")
    ap.add_argument("--dev", action="store_true", help="the development seeds; writes nothing")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--only", default="", help="comma-separated family kinds; prints, writes nothing"
    )
    ap.add_argument("--tabular", choices=("dev", "held_out"), help="print the tabular check's runs")
    ap.add_argument("--from-logs", nargs="+", default=None, metavar="LOG",
                    help="assemble the printed runs of earlier invocations (network and "
                    "--tabular) and write the results")  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.tabular:
        sys.path.insert(0, str(HERE))
        import bench_label_errors as ble

        names = ble.DEV if args.tabular == "dev" else ble.HELD_OUT
        for d in names:
            for model in ("softmax", "mlp32"):
                for noise in TABULAR_NOISE:
                    for seed in TABULAR_SEEDS:
                        print(json.dumps(tabular_run(d, model, noise, seed)), flush=True)
        return
    if args.from_logs:
        lines = _lines(args.from_logs)
        runs = [r for r in lines if "family" in r]
        tab = [r for r in lines if "dataset" in r]
        seeds = sorted({r["seed"] for r in runs})
    else:
        seeds = list(DEV_SEEDS if args.dev else (REPORT_SEEDS[:2] if args.quick else REPORT_SEEDS))
        only = {s for s in args.only.split(",") if s}
        runs, tab = [], []
        for cfg in CONFIGS:
            if only and cfg[1] not in only:
                continue
            for seed in seeds:
                r = run_one(*cfg, seed)
                runs.append(r)
                print(json.dumps(r, default=float), flush=True)
        if args.dev or only:
            print(markdown({"summary": summarise(runs)}))
            return
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python " + " ".join(["benchmarks/bench_network_ranking.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {args.threads} torch threads, {os.cpu_count()} cores "
        "(shared with other jobs)",
        "load": " / ".join(f"{v:.1f}" for v in os.getloadavg()),
        "torch": torch.__version__,
        "default": DEFAULT_METHOD,
        "seeds": seeds,
        "runs": runs,
        "summary": summarise(runs),
        "tabular_runs": tab,
        "tabular_summary": tabular_summary(tab) if tab else {},
        "wall_seconds": time.perf_counter() - t0,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, default=float))
    print(markdown(result))
    print(tabular_markdown(result["tabular_summary"]))
    print(f"wrote {RESULTS}")


def tabular_markdown(s: dict[str, Any]) -> str:
    cols = [m for m in TABULAR_METHODS if m != "default"]
    lines = ["| split, model | runs | default | " + " | ".join(cols) + " | default vs loss "
             "(W-L, p) | vs self-influence | vs old default |",
             "|" + "---|" * (len(cols) + 6)]  # fmt: skip
    for key, v in s.items():
        m = v["mean_ap"]
        pair = [v[k] for k in ("default_vs_loss", "default_vs_self_influence",
                               "default_vs_old_default")]  # fmt: skip
        lines.append(
            f"| {key} | {v['runs']} | **{m['default']:.3f}** | "
            + " | ".join(f"{m[c]:.3f}" for c in cols)
            + " | "
            + " | ".join(f"{p['wins']}-{p['losses']}, p={p['wilcoxon_p']:.2g}" for p in pair)
            + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
