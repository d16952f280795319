"""Architectures no default was chosen on, through ``find_label_errors`` end to end.

One command: ``.venv/bin/python benchmarks/bench_model_zoo.py`` (about 5 minutes on 2 cores).
Each network has a part the earlier grids never had; all are trained with Adam (weight decay
1e-3, 40 epochs, batches of 64) on 10% uniformly flipped labels and scanned with their
clean evaluation rows as ``eval_data`` at the weight decay as damping (what the scan uses
when the training run logged it):

* ``upsample_cnn`` (digits 8x8): Conv2d, GroupNorm, PReLU, a ConvTranspose2d that upsamples,
  a strided Conv2d, pooling, a linear head (EK-FAC; the transposed convolution, the PReLU
  slopes and the norms in the diagonal block; PReLU's Jacobian cannot be batched by
  ``torch.func.vmap``: its block runs one example at a time);
* ``depthwise_cnn`` (digits): MobileNet-style depthwise (grouped) and pointwise
  convolutions, BatchNorm (10,730 parameters: exact under ``auto``);
* ``vit`` (digits as 16 patches of 2x2): a patch embedding, a class token and a position
  table held as raw ``nn.Parameter``, a pre-norm transformer encoder, and a dict output
  ``{"logits": ..., "cls": ...}`` (EK-FAC; class token and position table in the block);
* ``binary_logit`` (breast_cancer): an MLP with ONE logit trained with
  ``BCEWithLogitsLoss`` (scored as the two-class logits ``[0, z]``; exact);
* ``bilinear`` (digits flattened): a tanh layer and an ``nn.Bilinear`` head (7,330
  parameters: exact; the EK-FAC diagonal block for such layers is tested in
  ``tests/influence/test_ekfac.py``).

Per run: the back-end ``auto`` picked, how many parameters sit in the diagonal block,
whether per-example passes fell back to one example at a time; the evaluation accuracy;
average precision of the default ranking, of the in-sample loss and of plain self-influence;
precision at k = #flips; the expected count against the flips; seconds. Seeds 0-2, none
looked at before. Writes ``benchmarks/results/model_zoo.json``.
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
WD, EPOCHS, FLIP = 1e-3, 40, 0.1
MODELS = ("upsample_cnn", "depthwise_cnn", "vit", "binary_logit", "bilinear")
SEEDS = range(3)


def _build(name: str) -> tuple[Any, Any, Any, int]:
    """``(model, x, y, n_train)`` for one architecture (data shuffled later by seed)."""
    import torch
    from infgate.examples.networks import digits_images
    from torch import nn

    class UpsampleCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(1, 32, 3, padding=1)
            self.gn = nn.GroupNorm(4, 32)
            self.act = nn.PReLU(32)
            self.up = nn.ConvTranspose2d(32, 32, 2, stride=2)
            self.c2 = nn.Conv2d(32, 48, 3, stride=2, padding=1)
            self.head = nn.Linear(48 * 8 * 8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.act(self.gn(self.c1(x)))
            h = torch.relu(self.c2(torch.relu(self.up(h))))
            return self.head(h.flatten(1))

    class DepthwiseCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 32, 3, padding=1)
            self.dw1 = nn.Conv2d(32, 32, 3, padding=1, groups=32)
            self.pw1 = nn.Conv2d(32, 64, 1)
            self.bn = nn.BatchNorm2d(64)
            self.dw2 = nn.Conv2d(64, 64, 3, stride=2, padding=1, groups=64)
            self.pw2 = nn.Conv2d(64, 96, 1)
            self.head = nn.Linear(96, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.stem(x))
            h = torch.relu(self.bn(self.pw1(self.dw1(h))))
            h = torch.relu(self.pw2(self.dw2(h)))
            return self.head(h.mean((2, 3)))

    class ViT(nn.Module):
        def __init__(self, dim: int = 32) -> None:
            super().__init__()
            self.patch = nn.Linear(4, dim)
            self.cls = nn.Parameter(torch.zeros(1, 1, dim))
            self.pos = nn.Parameter(torch.zeros(1, 17, dim))
            layer = nn.TransformerEncoderLayer(
                dim, 4, 64, dropout=0.0, batch_first=True, norm_first=True
            )
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, 10)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            b = x.shape[0]
            patches = x.reshape(b, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(b, 16, 4)
            h = torch.cat([self.cls.expand(b, -1, -1), self.patch(patches)], 1) + self.pos
            cls = self.norm(self.encoder(h)[:, 0])
            return {"logits": self.head(cls), "cls": cls}

    class BilinearNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hidden = nn.Linear(64, 24)
            self.mix = nn.Bilinear(24, 24, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.tanh(self.hidden(x))
            return self.mix(h, h)

    if name == "binary_logit":
        from sklearn.datasets import load_breast_cancer

        xb, yb = load_breast_cancer(return_X_y=True)
        xb = (xb - xb.mean(0)) / xb.std(0)
        model = nn.Sequential(nn.Linear(30, 32), nn.ReLU(), nn.Linear(32, 1))
        return model, torch.tensor(xb, dtype=torch.float32), torch.tensor(yb), 400
    x, y = digits_images()
    if name == "bilinear":
        return BilinearNet(), x.reshape(len(x), -1), y, 600
    cls = {"upsample_cnn": UpsampleCNN, "depthwise_cnn": DepthwiseCNN, "vit": ViT}[name]
    return cls(), x, y, 600


def _logits(out: Any) -> Any:
    return out["logits"] if isinstance(out, dict) else out


def _train(model: Any, x: Any, y: Any, seed: int) -> None:
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=WD)
    model.train()
    for _ in range(EPOCHS):
        for idx in torch.randperm(len(y), generator=gen).split(64):
            z = _logits(model(x[idx]))
            if z.shape[-1] == 1:
                loss = F.binary_cross_entropy_with_logits(z.squeeze(-1), y[idx].float())
            else:
                loss = F.cross_entropy(z, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def run(cfg: tuple[str, int]) -> dict[str, Any]:
    import torch
    from infgate.detect import find_label_errors
    from infgate.examples.networks import flip_labels
    from infgate.influence import InfluenceScorer
    from infgate.influence.gradients import model_logits
    from sklearn.metrics import average_precision_score

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    name, seed = cfg
    torch.manual_seed(seed)
    model, x, y, n = _build(name)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    n_eval = min(300, len(y) - n)
    k = int(y.max()) + 1
    noisy, _ = flip_labels(y[:n], FLIP, classes=k, seed=seed)
    flipped = (noisy != y[:n]).numpy()
    _train(model, x[:n], noisy, seed)
    with torch.no_grad():
        z_eval = model_logits(model(x[n : n + n_eval]))
        eval_acc = float((z_eval.argmax(1) == y[n : n + n_eval]).float().mean())
        probs = torch.softmax(model_logits(model(x[:n])).double(), 1).numpy()
    loss = -np.log(np.clip(probs[np.arange(n), noisy.numpy()], 1e-300, 1.0))
    t0 = time.perf_counter()
    scorer = InfluenceScorer(model, (x[:n], noisy), damping=WD, progress=False)
    df = find_label_errors(
        model,
        (x[:n], noisy),
        eval_data=(x[n : n + n_eval], y[n : n + n_eval]),
        scorer=scorer,
        progress=False,
    )
    seconds = time.perf_counter() - t0
    df = df.assign(_row=df["example_id"].astype(int)).sort_values("_row")
    top = np.argsort(-df["score"].to_numpy(), kind="stable")[: int(flipped.sum())]
    block = getattr(scorer.backend, "block", None)
    fallback = scorer.engine.vmap_fallback or (
        block.engine.vmap_fallback if block is not None else None
    )
    row = {
        "model": name,
        "seed": seed,
        "parameters": scorer.engine.n_params,
        "back_end": scorer.choice.method,
        "own_block_tensors": len(scorer.choice.own_block),
        "own_block_params": 0 if block is None else int(block.n_params),
        "vmap_fallback": fallback is not None,
        "eval_accuracy": eval_acc,
        "n_flipped": int(flipped.sum()),
        "ap_default": float(average_precision_score(flipped, df["score"])),
        "ap_loss": float(average_precision_score(flipped, loss)),
        "ap_self_influence": float(average_precision_score(flipped, df["self_influence"])),
        "precision_at_k": float(flipped[top].mean()),
        "expected_errors": float(df.attrs["expected_errors"]),
        "flagged": int(df["is_suspect"].sum()),
        "leverage_violation_rate": float(df.attrs.get("loo_leverage_violation_rate", 0.0)),
        "seconds": seconds,
    }
    print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    return row


def main() -> None:
    import torch

    configs = [(m, s) for m in MODELS for s in SEEDS]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:
        rows = list(pool.map(run, configs))
    wall = time.perf_counter() - t0
    summary: dict[str, Any] = {}
    for name in MODELS:
        sel = [r for r in rows if r["model"] == name]
        d, lo = [r["ap_default"] for r in sel], [r["ap_loss"] for r in sel]
        summary[name] = {
            "parameters": sel[0]["parameters"],
            "back_end": sel[0]["back_end"],
            "own_block_params": sel[0]["own_block_params"],
            "vmap_fallback": sel[0]["vmap_fallback"],
            "eval_accuracy": float(np.mean([r["eval_accuracy"] for r in sel])),
            "ap_default": float(np.mean(d)),
            "ap_loss": float(np.mean(lo)),
            "ap_self_influence": float(np.mean([r["ap_self_influence"] for r in sel])),
            "precision_at_k": float(np.mean([r["precision_at_k"] for r in sel])),
            "wins_vs_loss": f"{sum(a > b for a, b in zip(d, lo, strict=True))}-"
            f"{sum(a < b for a, b in zip(d, lo, strict=True))}",
            "count_ratios": [round(r["expected_errors"] / r["n_flipped"], 2) for r in sel],
            "seconds": float(np.mean([r["seconds"] for r in sel])),
        }
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_seconds": wall,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "model_zoo.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1)
    )
    for key, s in summary.items():
        print(key, {k: round(v, 3) if isinstance(v, float) else v for k, v in s.items()})


if __name__ == "__main__":
    main()
