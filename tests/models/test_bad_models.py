"""Bad input on a registered model: one clear line, exit 1, and nothing stored or tagged.

Images of mixed sizes, token ids outside the embedding, and a model logged in training mode
(a pt2 graph keeps its training-mode batch norm: refused; a pickled module is switched to
eval). A custom module holding a raw ``nn.Parameter`` is not bad input: it gets its own
diagonal block, named in the stored choice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from infgate.examples.networks import TrainOptions, make_network, train_network
from infgate.examples.registry_models import family_data, png_bytes, register_network
from torch import nn

from tests.models.conftest import Registry
from tests.services import MlflowServer


class RawMix(nn.Module):
    """A custom layer holding a raw parameter that its forward multiplies by."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mix = nn.Parameter(torch.eye(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.mix


class CustomNet(nn.Module):
    """28k parameters (above auto's exact budget), one of them in :class:`RawMix`."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(30, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU())
        self.custom = RawMix(64)
        self.head = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.custom(self.body(x)))


_BEFORE: dict[str, dict[str, str]] = {}  # tmp_path -> the version's gate tags before the scan


def _gate_tags(server: MlflowServer, name: str, version: str) -> dict[str, str]:
    from mlflow import MlflowClient

    tags = MlflowClient(server.uri, server.uri).get_model_version(name, version).tags
    return {k: v for k, v in tags.items() if k in {"infgate.gate", "infgate.scan_id"}}


def _scan(cli, uri: str, server: MlflowServer, tmp_path: Path, *extra: str | Path):  # type: ignore[no-untyped-def]
    # the session's shared versions may carry another test's verdict: compare with that
    name, version = uri.removeprefix("models:/").split("/")
    _BEFORE[str(tmp_path)] = _gate_tags(server, name, version)
    return cli(
        "scan",
        uri,
        "--no-flow",
        "--db",
        f"sqlite:///{tmp_path / 'infgate.db'}",
        "--tracking-uri",
        server.uri,
        "--report-dir",
        tmp_path / "report",
        *extra,
    )


def _untouched(tmp_path: Path, server: MlflowServer, name: str, version: str) -> None:
    """No scan stored, no report written, the version's gate tags as they were."""
    from infgate.store import Store

    db = tmp_path / "infgate.db"
    if db.exists():
        assert Store.from_url(f"sqlite:///{db}").list_scans() == []
    assert not (tmp_path / "report").exists() or not any((tmp_path / "report").iterdir())
    assert _gate_tags(server, name, version) == _BEFORE[str(tmp_path)]


def _one_line_error(res) -> str:  # type: ignore[no-untyped-def]
    assert res.code == 1, res
    errors = [ln for ln in res.err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, res.err  # one error line (progress lines aside)
    assert "Traceback" not in res.err, res
    return errors[0]


def _custom_version(flavour: str, server: MlflowServer, tmp_path: Path):  # type: ignore[no-untyped-def]
    data = family_data("mlp", n_train=120, n_eval=30, seed=1)
    model = CustomNet()
    train_network(model, data.x, data.y, TrainOptions(epochs=3, weight_decay=1e-3))
    return register_network(
        data,
        name=f"bad-custom-{flavour}",
        workdir=tmp_path / "data",
        tracking_uri=server.uri,
        options=TrainOptions(weight_decay=1e-3),
        serialization_format=None if flavour == "pt2" else "pickle",
        model=model,
    )


@pytest.mark.parametrize("flavour", ["pickle", "pt2"])
def test_custom_raw_parameter_gets_a_named_diagonal_block(
    flavour: str, cli, mlflow_server: MlflowServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A custom module's raw parameter (a pickled module) or the matmul that uses it (a
    pt2 graph, where the module is gone) has no Kronecker factors: EK-FAC gives it its own
    diagonal block and says so in the stored choice (nothing dropped silently); both
    flavours of the same model are scanned alike."""
    from infgate.store import Store

    reg = _custom_version(flavour, mlflow_server, tmp_path)
    res = _scan(cli, reg.uri, mlflow_server, tmp_path)
    assert res.code in (0, 2), res
    (info,) = Store.from_url(f"sqlite:///{tmp_path / 'infgate.db'}").list_scans()
    choice = (info.curvature or {})["choice"]
    assert info.method == "ekfac" and choice["method"] == "ekfac"
    why = (
        "custom.mix: used by matmul.default in the pt2 graph"
        if flavour == "pt2"
        else "custom (RawMix): a module EK-FAC has no Kronecker factors for"
    )
    assert choice["own_block"] == {"custom.mix": why}
    assert "own diagonal block for custom.mix" in choice["reason"]


def test_images_of_mixed_sizes_are_refused(cli, registered: Registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = registered("resnet", "pt2")
    frame = r.data.train.head(20).copy()
    frame.loc[7, "image"] = png_bytes(np.zeros((9, 9), dtype=np.uint8))
    path = tmp_path / "mixed.parquet"
    frame.to_parquet(path, index=False)
    line = _one_line_error(_scan(cli, r.reg.uri, r.server, tmp_path, "--data", path))
    assert "resnet-00007" in line and "9x9" in line and "8x8" in line, line
    assert "resize" in line, line
    _untouched(tmp_path, r.server, r.reg.name, r.reg.version)


def test_token_ids_outside_the_embedding_are_refused(
    cli, registered: Registry, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    r = registered("transformer", "pt2")
    frame = r.data.train.head(20).copy()
    tokens = [np.array(t, dtype=np.int64) for t in frame["tokens"]]
    tokens[5][3] = 50  # the vocabulary is 0..49
    frame["tokens"] = tokens
    path = tmp_path / "oov.parquet"
    frame.to_parquet(path, index=False)
    line = _one_line_error(_scan(cli, r.reg.uri, r.server, tmp_path, "--data", path))
    assert "token id 50" in line and "50 rows" in line, line
    _untouched(tmp_path, r.server, r.reg.name, r.reg.version)


def _training_mode_version(flavour: str, server: MlflowServer, tmp_path: Path):  # type: ignore[no-untyped-def]
    data = family_data("conv1d", n_train=60, n_eval=20, seed=2)
    model = make_network("conv1d", classes=4, width=8)
    train_network(model, data.x, data.y, TrainOptions(epochs=1))
    model.train()  # logged without model.eval(): batch norm in training mode
    return data, register_network(
        data,
        name=f"bad-training-mode-{flavour}",
        workdir=tmp_path / "data",
        tracking_uri=server.uri,
        options=TrainOptions(weight_decay=1e-3),
        serialization_format=None if flavour == "pt2" else "pickle",
        model=model,
    )


def test_pt2_model_logged_in_training_mode_is_refused(
    cli, mlflow_server: MlflowServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    _, reg = _training_mode_version("pt2", mlflow_server, tmp_path)
    line = _one_line_error(_scan(cli, reg.uri, mlflow_server, tmp_path))
    assert "logged in training mode" in line and "batch_norm" in line, line
    assert "model.eval()" in line, line
    _untouched(tmp_path, mlflow_server, reg.name, reg.version)


def test_pickled_model_logged_in_training_mode_loads_in_eval_mode(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    from infgate.registry import load_model, resolve_model_version

    data, reg = _training_mode_version("pickle", mlflow_server, tmp_path)
    mv = resolve_model_version(reg.uri, tracking_uri=mlflow_server.uri)
    model = load_model(mv, tracking_uri=mlflow_server.uri)
    assert model.training is False
    assert all(not m.training for m in model.modules())
    x = data.x[:16]
    with torch.no_grad():
        first, second = model(x), model(x[:3])
    # running statistics, not the batch's: other rows in the batch change nothing
    torch.testing.assert_close(first[:3], second, rtol=1e-5, atol=1e-6)
