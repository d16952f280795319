"""Reference network families, their data and a training helper (tests and benchmarks).

Four families cover the layer kinds the influence stage must handle:

* :class:`TabularMLP`: Linear + ReLU (+ Dropout) on feature vectors.
* :class:`ResNetCNN`: a ResNet-style CNN (stem, three residual stages with BatchNorm,
  a strided 1x1 projection per stage, Dropout, global pooling): 1.2M parameters at the
  default width 64 on 8x8 (or 16x16) single-channel images, flat or ``(1, H, W)`` input.
* :class:`Conv1dNet`: a 1-D CNN over ``(L,)`` or ``(C, L)`` sequences.
* :class:`TransformerClassifier`: ``nn.Embedding`` over int64 token ids (plus position
  embeddings), an ``nn.TransformerEncoder`` (``batch_first``, so eval-mode inference can
  take PyTorch's attention fast path) and a final LayerNorm, mean-pooled.

Data is generated or bundled with scikit-learn (digits as images); nothing is downloaded.
Randomness comes from ``torch.Generator`` / ``numpy.random.default_rng``, never the global RNG.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from infgate.errors import InvalidInputError
from torch import nn

__all__ = [
    "AttentionMaskClassifier",
    "Conv1dNet",
    "ResNetCNN",
    "TabularMLP",
    "TrainOptions",
    "TransformerClassifier",
    "digits_images",
    "flip_labels",
    "make_network",
    "token_sequences",
    "train_network",
    "wave_sequences",
]

log = logging.getLogger(__name__)


class TabularMLP(nn.Module):
    """``in -> [Linear -> ReLU -> Dropout] x len(hidden) -> Linear(classes)``."""

    def __init__(
        self,
        in_features: int,
        classes: int,
        hidden: tuple[int, ...] = (64, 64),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class _Block(nn.Module):
    """Residual block: conv3x3-BN-ReLU-conv3x3-BN plus a (projected) skip, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.proj: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.proj(x))


class ResNetCNN(nn.Module):
    """ResNet-style CNN on single-channel ``side x side`` images (flat or ``(1, H, W)``).

    Args:
        classes: outputs.
        side: image side (8 for digits; 16 works too).
        width: channels of the first stage; stages have ``width, 2 width, 4 width``.
        dropout: before the classifier.
    """

    def __init__(self, classes: int = 10, side: int = 8, width: int = 64, dropout: float = 0.1):
        super().__init__()
        self.side = side
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.stages = nn.Sequential(
            _Block(width, width, 1), _Block(width, 2 * width, 2), _Block(2 * width, 4 * width, 2)
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], 1, self.side, self.side)
        h = self.stages(self.stem(x))
        return self.head(self.drop(h.mean((2, 3))))


class Conv1dNet(nn.Module):
    """1-D CNN: two conv-BN-ReLU layers (the second strided), global pooling, Linear."""

    def __init__(self, classes: int, channels: int = 1, width: int = 32, kernel: int = 5) -> None:
        super().__init__()
        self.channels = channels
        pad = kernel // 2
        self.features = nn.Sequential(
            nn.Conv1d(channels, width, kernel, padding=pad),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Conv1d(width, 2 * width, kernel, stride=2, padding=pad),
            nn.ReLU(),
        )
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], self.channels, -1)
        return self.head(self.features(x).mean(2))


class TransformerClassifier(nn.Module):
    """Token ids ``(B, L)`` int64 -> embeddings + positions -> TransformerEncoder -> LayerNorm
    -> mean over positions -> Linear.

    With ``pad_id`` the model takes padded sequences: ``pad_id`` is the embedding's
    ``padding_idx``, padded positions are masked out of attention (a key padding mask) and
    out of the mean, so the logits do not depend on how far a sequence is padded."""

    def __init__(
        self,
        vocab: int,
        classes: int,
        *,
        max_len: int = 64,
        d_model: int = 64,
        heads: int = 4,
        layers: int = 2,
        ff: int = 128,
        dropout: float = 0.1,
        pad_id: int | None = None,
    ) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab, d_model, padding_idx=pad_id)
        self.pos = nn.Embedding(max_len, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, heads, ff, dropout=dropout, batch_first=True, activation="relu"
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        h = self.embed(tokens) + self.pos(pos).unsqueeze(0)
        if self.pad_id is None:
            return self.head(self.norm(self.encoder(h)).mean(1))
        pad = tokens == self.pad_id
        out = self.norm(self.encoder(h, src_key_padding_mask=pad))
        keep = (~pad).unsqueeze(-1).to(out.dtype)
        return self.head((out * keep).sum(1) / keep.sum(1).clamp_min(1.0))


class AttentionMaskClassifier(TransformerClassifier):
    """:class:`TransformerClassifier` called as a Hugging Face-style text model is:
    ``forward(input_ids, attention_mask)``, masked where ``attention_mask`` is 0 (attention
    and the mean), so the logits do not depend on the padding."""

    def forward(  # type: ignore[override]
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        h = self.embed(input_ids) + self.pos(pos).unsqueeze(0)
        pad = attention_mask == 0
        out = self.norm(self.encoder(h, src_key_padding_mask=pad))
        keep = (~pad).unsqueeze(-1).to(out.dtype)
        return self.head((out * keep).sum(1) / keep.sum(1).clamp_min(1.0))


def make_network(kind: str, *, seed: int = 0, **kwargs: object) -> nn.Module:
    """Build ``kind`` (``"mlp"``, ``"resnet"``, ``"conv1d"``, ``"transformer"``) with its
    initial weights drawn from ``seed``, leaving the global RNG as it was."""
    table: dict[str, type[nn.Module]] = {
        "mlp": TabularMLP,
        "resnet": ResNetCNN,
        "conv1d": Conv1dNet,
        "transformer": TransformerClassifier,
    }
    if kind not in table:
        raise InvalidInputError(f"kind must be one of {sorted(table)}, got {kind!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return table[kind](**kwargs)


# -- data -------------------------------------------------------------------------------------
def digits_images(side: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits as float32 ``(1797, 1, side, side)`` images in [0, 1]
    (8x8 as shipped; 16x16 by bilinear upsampling) and int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if side != 8:
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    return x, torch.as_tensor(d.target, dtype=torch.int64)


def token_sequences(
    n: int, *, vocab: int = 50, length: int = 24, classes: int = 4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, length)`` int64 token ids whose distribution depends on the class: each class
    favours its own slice of the vocabulary (40% of tokens), the rest is uniform noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    band = max(1, vocab // classes)
    own = rng.integers(0, band, (n, length)) + (y[:, None] * band)
    noise = rng.integers(0, vocab, (n, length))
    tokens = np.where(rng.random((n, length)) < 0.4, own, noise) % vocab
    return torch.as_tensor(tokens, dtype=torch.int64), torch.as_tensor(y, dtype=torch.int64)


def ragged_token_sequences(
    n: int,
    *,
    vocab: int = 50,
    min_length: int = 6,
    max_length: int = 24,
    classes: int = 4,
    seed: int = 0,
) -> tuple[list[np.ndarray], torch.Tensor]:
    """Like :func:`token_sequences`, but each row's length is drawn from ``min_length`` to
    ``max_length`` and token 0 is never used (it is left for padding): a list of int64
    arrays (as a Parquet list column stores them) and the labels."""
    rng = np.random.default_rng(seed)
    tokens, y = token_sequences(n, vocab=vocab - 1, length=max_length, classes=classes, seed=seed)
    lengths = rng.integers(min_length, max_length + 1, n)
    rows = [t[:k].numpy() + 1 for t, k in zip(tokens, lengths, strict=True)]
    return rows, y


def wave_sequences(
    n: int, *, length: int = 64, classes: int = 4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, length)`` float32 noisy sine waves whose frequency depends on the class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    t = np.arange(length) / length
    phase = rng.uniform(0, 2 * math.pi, (n, 1))
    x = np.sin(2 * math.pi * (y[:, None] + 1) * 2 * t + phase) + 0.8 * rng.standard_normal(
        (n, length)
    )
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)


def flip_labels(
    y: torch.Tensor, fraction: float, *, classes: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, np.ndarray]:
    """Uniform label noise: ``fraction`` of the labels moved to another class at random.

    Returns:
        The noisy labels and a boolean mask of the flipped rows.
    """
    if not 0.0 <= fraction < 1.0:
        raise InvalidInputError(f"fraction must be in [0, 1), got {fraction!r}")
    k = int(classes if classes is not None else int(y.max()) + 1)
    rng = np.random.default_rng(seed)
    n = len(y)
    rows = rng.choice(n, size=round(fraction * n), replace=False)
    noisy = y.clone()
    shift = torch.as_tensor(rng.integers(1, k, len(rows)), dtype=y.dtype)
    noisy[rows] = (noisy[rows] + shift) % k
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    return noisy, mask


# -- training ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainOptions:
    """How :func:`train_network` trains.

    Attributes:
        optimizer: ``"adam"`` or ``"sgd"`` (momentum 0.9).
        epochs: passes over the data (the most when ``until_converged``).
        lr: learning rate.
        weight_decay: L2 penalty (pass it as the influence damping to match the objective).
        batch_size: examples per step.
        until_converged: stop once the epoch's mean loss changes by less than ``tol``
            (relative) between epochs.
        tol: relative loss change that counts as converged.
        seed: shuffling seed (a ``torch.Generator``) and the seed of the dropout masks
            drawn during training (torch's global generator, forked and restored around the
            loop, so the caller's random state is untouched and equal options train equal
            models).
    """

    optimizer: Literal["adam", "sgd"] = "adam"
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    until_converged: bool = False
    tol: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "sgd"):
            raise InvalidInputError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InvalidInputError(f"{name} must be a positive int, got {v!r}")
        for name in ("lr", "tol"):
            if not getattr(self, name) > 0:
                raise InvalidInputError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not self.weight_decay >= 0:
            raise InvalidInputError(f"weight_decay must be >= 0, got {self.weight_decay!r}")


def train_network(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, options: TrainOptions | None = None
) -> nn.Module:
    """Train ``model`` on ``(x, y)`` with cross-entropy; returns it in eval mode.

    Raises:
        InvalidInputError: ``x`` and ``y`` lengths differ.
    """
    opt = options or TrainOptions()
    if x.shape[0] != y.shape[0]:
        raise InvalidInputError(f"x has {x.shape[0]:,} rows but y has {y.shape[0]:,}")
    params = [p for p in model.parameters() if p.requires_grad]
    optim: torch.optim.Optimizer
    if opt.optimizer == "adam":
        optim = torch.optim.Adam(params, lr=opt.lr, weight_decay=opt.weight_decay)
    else:
        optim = torch.optim.SGD(params, lr=opt.lr, momentum=0.9, weight_decay=opt.weight_decay)
    gen = torch.Generator().manual_seed(opt.seed)
    with torch.random.fork_rng(devices=[]):  # dropout draws from the global generator
        torch.manual_seed(opt.seed)
        _epochs(model, x, y, opt, optim, gen)
    return model.eval()


def _epochs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    opt: TrainOptions,
    optim: torch.optim.Optimizer,
    gen: torch.Generator,
) -> None:
    model.train()
    previous = math.inf
    for epoch in range(opt.epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        total = 0.0
        for i in range(0, x.shape[0], opt.batch_size):
            idx = order[i : i + opt.batch_size]
            optim.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            optim.step()
            total += float(loss.detach()) * len(idx)
        mean = total / x.shape[0]
        log.debug("epoch %d: loss %.4f", epoch + 1, mean)
        converged = math.isfinite(previous) and abs(previous - mean) <= opt.tol * abs(previous)
        if opt.until_converged and converged:
            break
        previous = mean
