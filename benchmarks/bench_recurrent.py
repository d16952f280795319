"""Recurrent text classifiers, a family no default was chosen on: does the scan hold up?

One command: ``.venv/bin/python benchmarks/bench_recurrent.py`` (about 6 minutes on 2
cores). Token-id sequences (:func:`infgate.examples.networks.token_sequences`, 4 classes),
600 training rows with 10% uniformly flipped labels, 300 clean evaluation rows; an
embedding, one recurrent layer, mean pooling over time and a linear head, trained with Adam
(weight decay 1e-3) for a few epochs and for longer:

* ``gru24``: GRU, hidden 24 (3,900 parameters: exact under ``auto``);
* ``gru64``: GRU, hidden 64 (16,800: EK-FAC, the recurrent weights in a diagonal block);
* ``lstm32``: bidirectional LSTM, hidden 32 (17,400: EK-FAC likewise).

``find_label_errors`` (``method="auto"``, the evaluation rows as ``eval_data``) at the weight
decay as damping (what the scan uses when the training run logged it) and at the default
damping (none logged). Per run: average precision of the default ranking, of the in-sample
loss and of plain self-influence; precision at k = #flips; the expected count against the
flips; the back-end; whether per-example passes had to run one example at a time (the
native GRU kernel cannot be batched by ``torch.func.vmap``); seconds. Seeds 0-4, none looked
at before. Writes ``benchmarks/results/recurrent.json``.
"""

from __future__ import annotations

import json
import platform
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
N, N_EVAL, WD = 600, 300, 1e-3
MODELS = {"gru24": ("GRU", 24), "gru64": ("GRU", 64), "lstm32": ("LSTM", 32)}
EPOCHS = {"few": 8, "long": 30}
SEEDS = range(5)


def run(cfg: tuple[str, str, int]) -> list[dict[str, Any]]:
    import torch
    from infgate.detect import find_label_errors
    from infgate.examples.networks import (
        TrainOptions,
        flip_labels,
        token_sequences,
        train_network,
    )
    from sklearn.metrics import average_precision_score
    from torch import nn

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    name, training, seed = cfg
    cell_name, hidden = MODELS[name]
    cell = getattr(nn, cell_name)

    class Recurrent(nn.Module):
        def __init__(self, vocab: int, classes: int) -> None:
            super().__init__()
            self.emb = nn.Embedding(vocab, 16)
            self.rnn = cell(16, hidden, batch_first=True, bidirectional=cell is nn.LSTM)
            self.head = nn.Linear(hidden * (2 if cell is nn.LSTM else 1), classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, _ = self.rnn(self.emb(x))
            return self.head(h.mean(1))

    x, y = token_sequences(N + N_EVAL, seed=seed)
    k, vocab = int(y.max()) + 1, int(x.max()) + 1
    noisy, _ = flip_labels(y[:N], 0.1, classes=k, seed=seed)
    flipped = (noisy != y[:N]).numpy()
    torch.manual_seed(seed)
    opts = TrainOptions(epochs=EPOCHS[training], lr=3e-3, weight_decay=WD, seed=seed)
    model = train_network(Recurrent(vocab, k), x[:N], noisy, opts).eval()
    with torch.no_grad():
        eval_acc = float((model(x[N:]).argmax(1) == y[N:]).float().mean())
        probs = torch.softmax(model(x[:N]).double(), 1).numpy()
    loss = -np.log(np.clip(probs[np.arange(N), noisy.numpy()], 1e-300, 1.0))
    out = []
    for damping in (WD, None):
        t0 = time.perf_counter()
        df = find_label_errors(
            model, (x[:N], noisy), eval_data=(x[N:], y[N:]), damping=damping, progress=False
        )
        seconds = time.perf_counter() - t0
        df = df.assign(_row=df["example_id"].astype(int)).sort_values("_row")
        top = np.argsort(-df["score"].to_numpy(), kind="stable")[: int(flipped.sum())]
        out.append(
            {
                "model": name,
                "training": training,
                "seed": seed,
                "damping": "weight decay" if damping is not None else "default",
                "damping_value": float(df.attrs["damping"]),
                "eval_accuracy": eval_acc,
                "n_flipped": int(flipped.sum()),
                "ap_default": float(average_precision_score(flipped, df["score"])),
                "ap_loss": float(average_precision_score(flipped, loss)),
                "ap_self_influence": float(average_precision_score(flipped, df["self_influence"])),
                "precision_at_k": float(flipped[top].mean()),
                "expected_errors": float(df.attrs["expected_errors"]),
                "flagged": int(df["is_suspect"].sum()),
                "noise_diagonal_margin": float(df.attrs["noise_diagonal_margin"]),
                "seconds": seconds,
            }
        )
    print(out[0], flush=True)
    return out


def main() -> None:
    import torch
    from infgate.influence import InfluenceScorer

    configs = [(m, t, s) for m in MODELS for t in EPOCHS for s in SEEDS]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:
        rows = [r for part in pool.map(run, configs) for r in part]
    wall = time.perf_counter() - t0
    # which back-end auto picks, and whether vmap had to fall back, per model (untrained)
    from torch import nn

    picks = {}
    for name, (cell_name, hidden) in MODELS.items():
        cell = getattr(nn, cell_name)
        emb = nn.Embedding(8, 16)
        rnn = cell(16, hidden, batch_first=True, bidirectional=cell is nn.LSTM)
        head = nn.Linear(hidden * (2 if cell is nn.LSTM else 1), 4)

        class Probe(nn.Module):
            def __init__(self, emb: nn.Module, rnn: nn.Module, head: nn.Module) -> None:
                super().__init__()
                self.emb, self.rnn, self.head = emb, rnn, head

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.head(self.rnn(self.emb(x))[0].mean(1))

        xs = torch.randint(0, 8, (32, 6))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scorer = InfluenceScorer(
                Probe(emb, rnn, head).eval(), (xs, xs[:, 0] % 4), progress=False
            )
        picks[name] = {
            "parameters": scorer.engine.n_params,
            "back_end": scorer.choice.method,
            "own_block": sorted(scorer.choice.own_block),
            "vmap_fallback": scorer.engine.vmap_fallback,
        }
    summary: dict[str, Any] = {}
    for name in MODELS:
        for training in EPOCHS:
            for damping in ("weight decay", "default"):
                sel = [
                    r
                    for r in rows
                    if r["model"] == name and r["training"] == training and r["damping"] == damping
                ]
                d, lo = [r["ap_default"] for r in sel], [r["ap_loss"] for r in sel]
                ratio = [r["expected_errors"] / r["n_flipped"] for r in sel]
                summary[f"{name} {training} {damping}"] = {
                    "eval_accuracy": float(np.mean([r["eval_accuracy"] for r in sel])),
                    "ap_default": float(np.mean(d)),
                    "ap_loss": float(np.mean(lo)),
                    "ap_self_influence": float(np.mean([r["ap_self_influence"] for r in sel])),
                    "precision_at_k": float(np.mean([r["precision_at_k"] for r in sel])),
                    "wins_vs_loss": f"{sum(a > b for a, b in zip(d, lo, strict=True))}-"
                    f"{sum(a < b for a, b in zip(d, lo, strict=True))}",
                    "count_ratio_median": float(np.median(ratio)),
                    "count_within_25pct": float(np.mean([abs(q - 1) <= 0.25 for q in ratio])),
                    "not_dominant_runs": sum(r["noise_diagonal_margin"] <= 0 for r in sel),
                    "seconds": float(np.mean([r["seconds"] for r in sel])),
                }
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_seconds": wall,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "recurrent.json").write_text(
        json.dumps({"meta": meta, "auto": picks, "summary": summary, "rows": rows}, indent=1)
    )
    print(json.dumps(picks, indent=1))
    for key, s in summary.items():
        print(key, {k: round(v, 3) if isinstance(v, float) else v for k, v in s.items()})


if __name__ == "__main__":
    main()
