"""Register the reference network families the way teams do: train, write Parquet, log to MLflow.

Each family of :mod:`infgate.examples.networks` gets its data stored as teams store it:

* ``mlp``: scikit-learn's bundled breast-cancer table, standardised, one float column per
  feature;
* ``resnet``: scikit-learn's digits as 8x8 grey PNG bytes in one ``image`` column (pixels
  0..255; the version's tag ``infgate.image_scale=255`` says how to read them);
* ``conv1d``: noisy sine waves as one fixed-size float32 array column ``signal``;
* ``transformer``: int64 token ids as one fixed-size list column ``tokens``.

:func:`register_network` trains the model (Adam or SGD, :class:`TrainOptions`), logs the
training run's ``weight_decay`` param, the training data (as the run's dataset input, or
the model-version tag ``infgate.train_data``) and the model (MLflow's default ``pt2``
format, or ``serialization_format="pickle"``), and registers a version. Labels carry a
planted fraction of flips; the clean ones are kept in a ``true_label`` column named by the
``infgate.true_label_column`` tag (never a feature).
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from infgate.errors import InvalidInputError
from infgate.examples.networks import (
    TrainOptions,
    digits_images,
    flip_labels,
    make_network,
    ragged_token_sequences,
    token_sequences,
    train_network,
    wave_sequences,
)
from torch import nn

__all__ = [
    "FAMILIES",
    "FamilyData",
    "RegisteredNetwork",
    "family_data",
    "png_bytes",
    "register_network",
]

log = logging.getLogger(__name__)

Family = Literal["mlp", "resnet", "conv1d", "transformer"]
FAMILIES: tuple[Family, ...] = ("mlp", "resnet", "conv1d", "transformer")


@dataclass(frozen=True)
class FamilyData:
    """One family's stored training and evaluation rows and how to build its network.

    Attributes:
        kind: the family (``make_network`` kind).
        train: training rows: ``example_id``, the feature column(s), ``label`` (with
            planted flips) and ``true_label``.
        eval: held-out rows of the same distribution: ``example_id``, features, ``label``.
        flipped: boolean mask of the training rows whose label was flipped.
        x: the training inputs as the model takes them (for training).
        y: the noisy training labels (for training).
        network: keyword arguments of ``make_network(kind, ...)``.
        tags: model-version tags saying how to read the columns.
    """

    kind: Family
    train: pd.DataFrame
    eval: pd.DataFrame
    flipped: np.ndarray
    x: torch.Tensor
    y: torch.Tensor
    network: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        """The number of classes."""
        return int(self.network["classes"])


def png_bytes(image: np.ndarray) -> bytes:
    """A 2-D uint8 array as PNG bytes (grey)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _raw(
    kind: Family, n: int, seed: int, *, ragged: bool = False
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """``n`` inputs (as the model takes them), clean labels and the network's kwargs."""
    if kind == "mlp":
        from sklearn.datasets import load_breast_cancer

        d = load_breast_cancer()
        x = (d.data - d.data.mean(0)) / d.data.std(0)
        order = np.random.default_rng(seed).permutation(len(x))[:n]
        feats = torch.as_tensor(x[order], dtype=torch.float32)
        return feats, torch.as_tensor(d.target[order]), {"in_features": 30, "classes": 2}
    if kind == "resnet":
        images, labels = digits_images()
        rows = torch.as_tensor(np.random.default_rng(seed).permutation(len(images))[:n])
        # store what a PNG can hold: 0..255 integers, read back with image_scale=255
        pixels = torch.round(images[rows] * 255) / 255
        return pixels, labels[rows], {"classes": 10, "side": 8, "width": 64}
    if kind == "conv1d":
        x, y = wave_sequences(n, length=64, classes=4, seed=seed)
        return x, y, {"classes": 4, "channels": 1, "width": 16}
    if kind == "transformer" and ragged:
        seqs, y = ragged_token_sequences(n, vocab=50, max_length=24, classes=4, seed=seed)
        padded = torch.zeros(n, 24, dtype=torch.int64)  # padded with 0, the id the model masks
        for i, r in enumerate(seqs):
            padded[i, : len(r)] = torch.as_tensor(r)
        return padded, y, {"vocab": 50, "classes": 4, "max_len": 24, "pad_id": 0}
    if kind == "transformer":
        x, y = token_sequences(n, vocab=50, length=24, classes=4, seed=seed)
        return x, y, {"vocab": 50, "classes": 4, "max_len": 24}
    raise InvalidInputError(f"kind must be one of {list(FAMILIES)}, got {kind!r}")


def _frame(kind: Family, x: torch.Tensor, ids: list[str], ragged: bool = False) -> pd.DataFrame:
    """The stored feature column(s) of ``x`` (``ragged``: token rows without their padding)."""
    if kind == "mlp":
        return pd.DataFrame(x.numpy(), columns=[f"f{j:02d}" for j in range(x.shape[1])]).assign(
            example_id=ids
        )[["example_id", *[f"f{j:02d}" for j in range(x.shape[1])]]]
    if kind == "resnet":
        pix = (x[:, 0].numpy() * 255).round().astype(np.uint8)
        return pd.DataFrame({"example_id": ids, "image": [png_bytes(p) for p in pix]})
    if ragged:
        return pd.DataFrame({"example_id": ids, "tokens": [r[r != 0] for r in x.numpy()]})
    column = "signal" if kind == "conv1d" else "tokens"
    return pd.DataFrame({"example_id": ids, column: list(x.numpy())})


def family_data(
    kind: Family,
    *,
    n_train: int = 300,
    n_eval: int = 100,
    noise: float = 0.1,
    seed: int = 0,
    ragged: bool = False,
) -> FamilyData:
    """Training rows (``noise`` of labels flipped, seeded) and evaluation rows of ``kind``.

    With ``ragged`` (transformer only) the token sequences have different lengths (6 to 24)
    and are stored as they are, unpadded; ``x`` pads them with 0 and the network masks 0
    (``pad_id=0``), as a text pipeline stores and trains on tokenized text.

    Raises:
        InvalidInputError: an unknown ``kind``, non-positive sizes, or ``noise`` outside
            ``[0, 1)``; ``ragged`` with another kind.
    """
    if n_train < 1 or n_eval < 1:
        raise InvalidInputError(f"n_train and n_eval must be >= 1, got {n_train}, {n_eval}")
    if ragged and kind != "transformer":
        raise InvalidInputError(
            f"ragged sequences are token data: kind 'transformer', not {kind!r}"
        )
    x, y, network = _raw(kind, n_train + n_eval, seed, ragged=ragged)
    if len(x) < n_train + n_eval:
        raise InvalidInputError(
            f"{kind}: only {len(x):,} rows available, asked for {n_train + n_eval:,}"
        )
    k = int(network["classes"])
    noisy, flipped = flip_labels(y[:n_train], noise, classes=k, seed=seed + 1)
    train = _frame(kind, x[:n_train], [f"{kind}-{i:05d}" for i in range(n_train)], ragged)
    train["label"] = noisy.numpy().astype(np.int64)
    train["true_label"] = y[:n_train].numpy().astype(np.int64)
    ev = _frame(kind, x[n_train:], [f"{kind}-eval-{i:05d}" for i in range(n_eval)], ragged)
    ev["label"] = y[n_train:].numpy().astype(np.int64)
    tags = {"infgate.true_label_column": "true_label"}
    if kind == "resnet":
        tags.update({"infgate.image_scale": "255", "infgate.image_shape": "8x8"})
    return FamilyData(kind, train, ev, flipped, x[:n_train], noisy, network, tags)


@dataclass(frozen=True)
class RegisteredNetwork:
    """A registered model version of one family and where its data lies.

    Attributes:
        name: registered model name.
        version: the version.
        run_id: the training run.
        train_path: the training Parquet file.
        eval_path: the evaluation Parquet file.
        flipped: the training rows whose label was flipped.
        n_params: the network's parameter count.
        train_accuracy: accuracy on the (noisy) training labels.
    """

    name: str
    version: str
    run_id: str
    train_path: Path
    eval_path: Path
    flipped: np.ndarray
    n_params: int
    train_accuracy: float

    @property
    def uri(self) -> str:
        """``models:/name/version``."""
        return f"models:/{self.name}/{self.version}"


def register_network(
    data: FamilyData,
    *,
    name: str,
    workdir: str | Path,
    tracking_uri: str,
    options: TrainOptions | None = None,
    serialization_format: Literal["pt2", "pickle"] | None = None,
    data_link: Literal["input", "tag"] = "input",
    model: nn.Module | None = None,
    extra_tags: dict[str, str] | None = None,
    input_names: tuple[str, ...] | None = None,
) -> RegisteredNetwork:
    """Train ``make_network(data.kind)`` (or ``model``) on ``data`` and register a version.

    Args:
        data: the family's rows (:func:`family_data`).
        name: registered model name.
        workdir: where the Parquet files go.
        tracking_uri: MLflow tracking and registry URI.
        options: how to train (its ``weight_decay`` is logged as the run's param).
        serialization_format: MLflow's format (``None`` = MLflow's default, ``pt2``).
        data_link: ``"input"`` logs the training data as the run's dataset input;
            ``"tag"`` sets the version tag ``infgate.train_data`` instead.
        model: a network to train instead of ``make_network(data.kind, **data.network)``
            (it is logged in whatever mode it is in after training).
        extra_tags: more model-version tags.
        input_names: for a model with several inputs (``forward(input_ids,
            attention_mask)``): their names, in order; ``data.x`` holds them stacked along
            dimension 1. The pt2 signature names them (so a scan finds the columns without
            a tag); a pickled model gets the tag ``infgate.model_inputs``.
    """
    import mlflow
    import mlflow.pytorch
    from mlflow import MlflowClient

    opts = options or TrainOptions()
    if data_link not in ("input", "tag"):
        raise InvalidInputError(f"data_link must be 'input' or 'tag', got {data_link!r}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    net = model if model is not None else make_network(data.kind, seed=opts.seed, **data.network)
    called: nn.Module = net
    if input_names is not None:
        from infgate.influence.inputs import SplitInputs

        called = SplitInputs(net, len(input_names))
    if model is None:
        train_network(called, data.x, data.y, opts)
    train_path = (workdir / f"{name}-train.parquet").resolve()
    eval_path = (workdir / f"{name}-eval.parquet").resolve()
    data.train.to_parquet(train_path, index=False)
    data.eval.to_parquet(eval_path, index=False)
    with torch.no_grad():
        accuracy = float((called(data.x).argmax(1) == data.y).float().mean())
    example: Any = data.x[:2].numpy()
    signature = None
    if input_names is not None:
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        example = tuple(t.numpy() for t in data.x[:2].unbind(1))
        signature = ModelSignature(
            inputs=Schema(
                [
                    TensorSpec(np.dtype(e.dtype), (-1, *e.shape[1:]), name=n)
                    for n, e in zip(input_names, example, strict=True)
                ]
            )
        )
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    mlflow.set_experiment(f"infgate-{name}")
    with mlflow.start_run(run_name=f"train-{name}") as run:
        mlflow.log_params(
            {
                "family": data.kind,
                "optimizer": opts.optimizer,
                "epochs": opts.epochs,
                "lr": opts.lr,
                "weight_decay": opts.weight_decay,
                "until_converged": opts.until_converged,
            }
        )
        mlflow.log_metric("train_accuracy", accuracy)
        if data_link == "input":
            ds = mlflow.data.from_pandas(  # type: ignore[attr-defined]
                data.train, source=str(train_path), targets="label", name=f"{name}-train"
            )
            mlflow.log_input(ds, context="training")
        info = mlflow.pytorch.log_model(
            net,
            name="model",
            input_example=example,
            signature=signature,
            serialization_format=serialization_format,
            pip_requirements=["torch"],  # skips MLflow's slow requirement inference
        )
    tags = {
        **data.tags,
        "infgate.classes": json.dumps([str(c) for c in range(data.n_classes)]),
        **(extra_tags or {}),
    }
    if data_link == "tag":
        tags["infgate.train_data"] = str(train_path)
    if input_names is not None and serialization_format == "pickle":
        tags["infgate.model_inputs"] = ",".join(input_names)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name)
    mv = client.create_model_version(
        name, info.model_uri, run_id=run.info.run_id, tags=tags, model_id=info.model_id
    )
    n_params = sum(p.numel() for p in net.parameters())
    log.info("registered %s v%s (%s, %s params)", name, mv.version, data.kind, f"{n_params:,}")
    return RegisteredNetwork(
        name,
        str(mv.version),
        run.info.run_id,
        train_path,
        eval_path,
        data.flipped,
        n_params,
        accuracy,
    )
