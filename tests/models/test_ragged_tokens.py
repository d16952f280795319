"""Token sequences stored as a Parquet list column of different lengths, scanned through the
registry: padded with the id the model masks (its embedding's ``padding_idx`` when no option
or tag names one) to the length the model's signature gives; bad input refused in one line
with nothing stored."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from infgate.examples.networks import TrainOptions, make_network, train_network
from infgate.examples.registry_models import (
    FamilyData,
    RegisteredNetwork,
    family_data,
    register_network,
)

from tests.models.test_bad_models import _one_line_error, _scan, _untouched
from tests.services import MlflowServer

# A small transformer (about 3,000 parameters): the scans pick the exact back-end, whose
# cost grows with the cube of the parameter count; nothing here is about the curvature.
N_TRAIN, N_EVAL, LENGTH = 240, 60, 24


def _ragged_data(seed: int) -> FamilyData:
    data = family_data(
        "transformer", n_train=N_TRAIN, n_eval=N_EVAL, noise=0.1, seed=seed, ragged=True
    )
    data.train["source"] = "forum"  # a string metadata column: not a feature
    return data


Versions = Callable[..., tuple[FamilyData, RegisteredNetwork]]


@pytest.fixture(scope="module")
def versions(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Versions:
    """``versions("pickle", pad_id=0)``: that version trained and registered once."""
    cache: dict[tuple[str, int | None], tuple[FamilyData, RegisteredNetwork]] = {}

    def get(flavour: str, *, pad_id: int | None = 0) -> tuple[FamilyData, RegisteredNetwork]:
        if (flavour, pad_id) not in cache:
            workdir = tmp_path_factory.mktemp(f"ragged-{flavour}")
            cache[(flavour, pad_id)] = _register(flavour, mlflow_server, workdir, pad_id=pad_id)
        return cache[(flavour, pad_id)]

    return get


def _register(
    flavour: str, server: MlflowServer, tmp_path: Path, *, pad_id: int | None = 0
) -> tuple[FamilyData, RegisteredNetwork]:
    data = _ragged_data(seed=3)
    network = {**data.network, "pad_id": pad_id}
    model = make_network("transformer", seed=0, d_model=16, heads=2, layers=1, ff=32, **network)
    opts = TrainOptions(optimizer="adam", lr=3e-3, epochs=6, weight_decay=1e-3, batch_size=32)
    train_network(model, data.x, data.y, opts)
    reg = register_network(
        data,
        name=f"ragged-{flavour}-{'pad' if pad_id is not None else 'nopad'}",
        workdir=tmp_path / "data",
        tracking_uri=server.uri,
        options=opts,
        serialization_format=None if flavour == "pt2" else "pickle",
        data_link="input" if flavour == "pt2" else "tag",
        model=model,
    )
    return data, reg


@pytest.mark.parametrize("flavour", ["pt2", "pickle"])
def test_ragged_token_sequences_scan_padded_with_the_models_padding_idx(
    flavour: str, cli, versions: Versions, mlflow_server: MlflowServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """No tag names a pad id: the scan pads with the embedding's ``padding_idx`` (found in
    the module, or in the pt2 graph's ``aten.embedding`` call) to the signature's 24
    positions, scores every row, and the mismatch test reads the evaluation rows the same
    way."""
    from infgate.store import Store

    data, reg = versions(flavour)
    assert data.train["tokens"].map(len).nunique() > 5  # really ragged
    res = _scan(cli, reg.uri, mlflow_server, tmp_path, "--eval", reg.eval_path)
    assert res.code in (0, 2), res
    store = Store.from_url(f"sqlite:///{tmp_path / 'infgate.db'}")
    (info,) = store.list_scans()
    assert info.n_rows == N_TRAIN
    findings = store.findings_frame(info.id)
    labels = findings[findings["kind"] == "label_error"]
    assert 0 < len(labels) < N_TRAIN
    assert set(labels["example_id"]) <= set(data.train["example_id"].astype(str))
    assert info.mismatch is not None
    assert info.columns is not None and info.columns["pad_token_id"] == 0
    # queue apply reads the file back with the stored plan (same dataset version) and the
    # corrected file keeps the ragged token lists and the metadata column as stored
    db = f"sqlite:///{tmp_path / 'infgate.db'}"
    res = cli("queue", "enqueue", str(info.id), "--db", db)
    assert res.code == 0, res
    out = tmp_path / "corrected.parquet"
    res = cli("queue", "apply", "--scan", str(info.id), "--out", out, "--db", db)
    assert res.code == 0, res
    corrected = pd.read_parquet(out)
    assert list(corrected.columns) == list(pd.read_parquet(reg.train_path).columns)
    assert corrected["tokens"].map(len).tolist() == data.train["tokens"].map(len).tolist()
    assert (corrected["source"] == "forum").all()


def test_eval_row_longer_than_the_model_input_is_refused(
    cli, versions: Versions, mlflow_server: MlflowServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    _, reg = versions("pickle")
    ev = pd.read_parquet(reg.eval_path)
    ev.at[4, "tokens"] = np.arange(1, LENGTH + 6, dtype=np.int64)
    path = tmp_path / "long-eval.parquet"
    ev.to_parquet(path, index=False)
    line = _one_line_error(_scan(cli, reg.uri, mlflow_server, tmp_path, "--eval", path))
    assert "transformer-eval-00004" in line and f"{LENGTH + 5} tokens" in line, line
    assert f"padded to ({LENGTH},)" not in line and f"the {LENGTH} every sequence" in line, line
    assert "input_shape" in line, line
    _untouched(tmp_path, mlflow_server, reg.name, reg.version)


def test_eval_rows_longer_than_every_training_row_set_the_padded_length(
    cli, versions: Versions, mlflow_server: MlflowServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """With no signature length (``data.use_signature: false``) the padded length is the
    longest sequence of the training AND the evaluation data, so an evaluation row longer
    than every training row (the model takes any length up to its 24 positions) is read,
    not refused; the stored plan says where the length came from."""
    from infgate.store import Store

    _, reg = versions("pickle")
    train = pd.read_parquet(reg.train_path)
    train["tokens"] = train["tokens"].map(lambda t: t[:20])  # every training row <= 20
    ev = pd.read_parquet(reg.eval_path)
    ev["tokens"] = ev["tokens"].map(lambda t: t[:20])
    ev.at[3, "tokens"] = np.arange(1, 24, dtype=np.int64)  # 23 tokens: the longest row
    train.to_parquet(tmp_path / "short-train.parquet", index=False)
    ev.to_parquet(tmp_path / "long-eval.parquet", index=False)
    (tmp_path / "scan.yaml").write_text("data: {use_signature: false}\n")
    res = _scan(
        cli,
        reg.uri,
        mlflow_server,
        tmp_path,
        "--data",
        tmp_path / "short-train.parquet",
        "--eval",
        tmp_path / "long-eval.parquet",
        "--config",
        tmp_path / "scan.yaml",
    )
    assert res.code in (0, 2), res
    (info,) = Store.from_url(f"sqlite:///{tmp_path / 'infgate.db'}").list_scans()
    assert info.columns is not None and info.columns["input_shape"] == [23]
    assert info.columns["shape_origin"] == "the longest evaluation sequence"
    assert info.mismatch is not None and info.n_rows == N_TRAIN


def test_ragged_tokens_without_a_pad_id_name_the_option(
    cli, versions: Versions, mlflow_server: MlflowServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A model without ``padding_idx`` and no option or tag: the lengths differ, so the scan
    refuses and says how to pad; with ``--pad-token-id`` it runs."""
    _, reg = versions("pickle", pad_id=None)
    line = _one_line_error(_scan(cli, reg.uri, mlflow_server, tmp_path))
    assert "pad_token_id" in line and "infgate.pad_token_id" in line, line
    _untouched(tmp_path, mlflow_server, reg.name, reg.version)
    (tmp_path / "again").mkdir()  # streamed: the padded length from a first pass
    res = _scan(
        cli, reg.uri, mlflow_server, tmp_path / "again", "--pad-token-id", "0", "--stream", "always"
    )
    assert res.code in (0, 2), res
    from infgate.store import Store

    (info,) = Store.from_url(f"sqlite:///{tmp_path / 'again' / 'infgate.db'}").list_scans()
    assert info.n_rows == N_TRAIN and info.columns is not None
    assert info.columns["pad_token_id"] == 0 and info.columns["pad_origin"] == "option pad_token_id"
    assert info.columns["input_shape"] == [LENGTH]  # the signature's length


@pytest.mark.parametrize("flavour", ["pt2", "pickle"])
def test_a_model_with_input_ids_and_attention_mask_scans(
    flavour: str, cli, mlflow_server: MlflowServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """``forward(input_ids, attention_mask)``, both stored as ragged list columns: the pt2
    signature names its two inputs (the pickled version has the tag
    ``infgate.model_inputs``), the scan pads the ids with the embedding's ``padding_idx``
    and the mask with 0, feeds them as two arguments and stores a plan of two inputs."""
    import dataclasses

    import torch
    from infgate.examples.networks import AttentionMaskClassifier
    from infgate.store import Store

    data = _ragged_data(seed=5)
    data.train["attention_mask"] = data.train["tokens"].map(lambda r: [1] * len(r))
    data.eval["attention_mask"] = data.eval["tokens"].map(lambda r: [1] * len(r))
    data.train.rename(columns={"tokens": "input_ids"}, inplace=True)
    data.eval.rename(columns={"tokens": "input_ids"}, inplace=True)
    data = dataclasses.replace(data, x=torch.stack([data.x, (data.x != 0).long()], dim=1))
    net = AttentionMaskClassifier(d_model=16, heads=2, layers=1, ff=32, **data.network)
    reg = register_network(
        data,
        name=f"two-inputs-{flavour}",
        workdir=tmp_path / "data",
        tracking_uri=mlflow_server.uri,
        options=TrainOptions(optimizer="adam", lr=3e-3, epochs=4, weight_decay=1e-3),
        serialization_format=None if flavour == "pt2" else "pickle",
        data_link="tag",
        model=_trained(net, data),
        input_names=("input_ids", "attention_mask"),
    )
    res = _scan(cli, reg.uri, mlflow_server, tmp_path, "--eval", reg.eval_path)
    assert res.code in (0, 2), res
    (info,) = Store.from_url(f"sqlite:///{tmp_path / 'infgate.db'}").list_scans()
    assert info.n_rows == N_TRAIN and info.columns is not None
    assert info.columns["n_inputs"] == 2
    assert info.columns["columns"] == ["input_ids", "attention_mask"]
    assert info.columns["pad_token_id"] == 0 and info.mismatch is not None


def _trained(net, data: FamilyData):  # type: ignore[no-untyped-def]
    from infgate.influence import SplitInputs

    opts = TrainOptions(optimizer="adam", lr=3e-3, epochs=4, weight_decay=1e-3, batch_size=32)
    train_network(SplitInputs(net, 2), data.x, data.y, opts)
    return net.eval()
