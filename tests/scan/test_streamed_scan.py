"""A scan whose training features stream from Parquet gives the same findings as the
in-memory scan of the same file (ranking, suspects, explanations, mismatch, gate, report).

The file has small row groups (37 rows) so every stage crosses many batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.services import MlflowServer

N_TRAIN, N_EVAL, ROW_GROUP = 240, 80, 37


def _write(path: Path, x: np.ndarray, y: np.ndarray, ids: list[str]) -> Path:
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])
    df.insert(0, "example_id", ids)
    df["label"] = y
    df["source"] = "vendor-a"  # a string column that is not a feature
    df.to_parquet(path, index=False, row_group_size=ROW_GROUP)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64).copy()
    rng = np.random.default_rng(0)
    flip = rng.choice(N_TRAIN, size=N_TRAIN // 10, replace=False)
    y[flip] = (y[flip] + rng.integers(1, 10, size=len(flip))) % 10
    root = tmp_path_factory.mktemp("streamed")
    train = _write(
        root / "train.parquet", x[:N_TRAIN], y[:N_TRAIN], [f"r{i}" for i in range(N_TRAIN)]
    )
    lo, hi = N_TRAIN, N_TRAIN + N_EVAL
    ev = _write(root / "eval.parquet", x[lo:hi], y[lo:hi], [f"e{i}" for i in range(N_EVAL)])
    return {"train": train, "eval": ev, "root": root}


@pytest.fixture(scope="module")
def model(files: dict[str, Path]) -> torch.nn.Module:
    from infgate.examples.models import make_classifier, train_classifier

    df = pd.read_parquet(files["train"])
    x = torch.as_tensor(df[[f"f{i}" for i in range(64)]].to_numpy(np.float32).copy())
    m = make_classifier(64, 10, hidden=(8,), generator=torch.Generator().manual_seed(0))
    train_classifier(m, x, torch.as_tensor(df["label"].to_numpy()))
    return m.eval()


def _both(files: dict[str, Path]) -> tuple[object, object, object]:
    import pyarrow.parquet as pq
    from infgate.data import EvalData, StreamedTrainingData, TrainingData, resolve_columns
    from infgate.data.readers import read_table

    plan = resolve_columns(pq.read_schema(files["train"]))
    memory = TrainingData.from_table(read_table(files["train"]), plan, name="train")
    streamed = StreamedTrainingData.from_parquet(files["train"], plan, batch_rows=50, name="train")
    ev = EvalData.from_table(read_table(files["eval"]), plan, name="eval")
    return memory, streamed, ev


def _config(directory: Path) -> object:
    from infgate.config import ScanConfig

    return ScanConfig().with_overrides(
        **{"report.directory": str(directory), "report.log_to_mlflow": False,
           "detect.explain_top": 3, "mismatch.n_permutations": 49}
    )  # fmt: skip


def _same_findings(a: object, b: object) -> None:
    ra, rb = a.analysis.ranking, b.analysis.ranking  # type: ignore[attr-defined]
    assert list(ra["example_id"]) == list(rb["example_id"])
    for col in ("score", "self_influence", "error_probability", "loo_given_probability"):
        np.testing.assert_allclose(ra[col], rb[col], rtol=1e-6, atol=1e-9, err_msg=col)
    for col in ("is_suspect", "given_label", "predicted_label", "suggested_label"):
        assert list(ra[col]) == list(rb[col]), col
    ea, eb = a.analysis.explanations, b.analysis.explanations  # type: ignore[attr-defined]
    assert ea is not None and eb is not None and len(ea) > 0
    pd.testing.assert_frame_equal(
        ea.drop(columns="influence"), eb.drop(columns="influence"), check_dtype=False
    )
    np.testing.assert_allclose(ea["influence"], eb["influence"], rtol=1e-6, atol=1e-12)
    ma, mb = a.analysis.mismatch, b.analysis.mismatch  # type: ignore[attr-defined]
    assert ma is not None and mb is not None
    assert ma.p_value == pytest.approx(mb.p_value, rel=1e-6, abs=1e-12)
    assert ma.flagged == mb.flagged
    assert a.verdict.passed == b.verdict.passed  # type: ignore[attr-defined]
    checks_a = [(c.name, c.success) for c in a.verdict.checks]  # type: ignore[attr-defined]
    checks_b = [(c.name, c.success) for c in b.verdict.checks]  # type: ignore[attr-defined]
    assert checks_a == checks_b
    assert a.n_rows == b.n_rows  # type: ignore[attr-defined]


def test_streamed_scan_dataset_equals_the_in_memory_scan(
    files: dict[str, Path], model: torch.nn.Module
) -> None:
    from infgate.scan import scan_dataset

    memory, streamed, ev = _both(files)
    assert memory.content_hash == streamed.content_hash  # type: ignore[attr-defined]
    root = files["root"]
    a = scan_dataset(model, memory, eval_data=ev, config=_config(root / "mem"))  # type: ignore[arg-type]
    b = scan_dataset(model, streamed, eval_data=ev, config=_config(root / "str"))  # type: ignore[arg-type]
    _same_findings(a, b)
    html = (Path(b.report.directory) / "report.html").read_text()  # type: ignore[union-attr]
    top = str(b.analysis.ranking["example_id"].iloc[0])
    assert top in html


def test_take_reads_the_rows_asked_for_in_their_order(files: dict[str, Path]) -> None:
    from infgate.data.streamed import feature_rows

    memory, streamed, _ = _both(files)
    rows = np.array([200, 3, 3, 36, 37, 239, 0])
    np.testing.assert_array_equal(streamed.take(rows), memory.features[rows])  # type: ignore[attr-defined]
    np.testing.assert_array_equal(feature_rows(streamed, rows), feature_rows(memory, rows))
    assert streamed.take([]).shape == (0, 64)  # type: ignore[attr-defined]
    from infgate.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match=r"row 240 is outside 0\.\.239"):
        streamed.take([0, 240])  # type: ignore[attr-defined]


def test_auto_streams_by_row_count_or_memory_budget(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from infgate.data import streamed as mod

    assert mod.should_stream(files["train"], budget_mb=4096)[0] is False
    stream, why = mod.should_stream(files["train"], budget_mb=0.01)
    assert stream and "memory budget" in why
    monkeypatch.setattr(mod, "STREAM_ROWS", 100)
    stream, why = mod.should_stream(files["train"], budget_mb=4096)
    assert stream and "240 rows > 100" in why
    csv = tmp_path / "t.csv"
    pd.read_parquet(files["train"]).to_csv(csv, index=False)
    assert mod.should_stream(csv, budget_mb=0.01)[0] is False  # CSV is read whole


def test_stream_option_is_checked_and_left_out_of_the_scan_identity() -> None:
    from infgate.config import ScanConfig
    from infgate.errors import ConfigError
    from infgate.plugins.cli.scan import build_scan_config
    from infgate.settings import Settings

    assert build_scan_config(stream="always").data.stream == "always"  # infgate scan --stream
    assert build_scan_config().data.stream == "auto"

    base = ScanConfig()
    assert base.data.stream == "auto"
    always = base.with_overrides(**{"data.stream": "always"})
    assert always.identity() == base.identity()  # same findings: a stored scan is reused
    with pytest.raises(ConfigError, match="data `stream` must be auto, always or never"):
        base.with_overrides(**{"data.stream": "sometimes"})
    assert Settings.from_env({"INFGATE_MEMORY_BUDGET_MB": "512"}).memory_budget_mb == 512
    with pytest.raises(ConfigError, match="INFGATE_MEMORY_BUDGET_MB"):
        Settings.from_env({"INFGATE_MEMORY_BUDGET_MB": "0"})


def test_run_scan_and_cli_stream_from_the_registry(
    files: dict[str, Path], model: torch.nn.Module, mlflow_server: MlflowServer
) -> None:
    """``run_scan`` with ``data.stream=always`` vs ``never`` on a registered version (own
    model name, own stores), and ``infgate scan --stream``: the same findings."""
    import mlflow
    import mlflow.pytorch
    from infgate.registry.refs import mlflow_uris
    from infgate.scan import run_scan
    from infgate.settings import Settings
    from infgate.store import Store
    from infgate.store.models import Finding
    from mlflow import MlflowClient
    from sqlalchemy import select

    uri = mlflow_server.uri
    root = files["root"]
    with mlflow_uris(uri), mlflow.start_run():  # tracking AND registry: the session's server
        info = mlflow.pytorch.log_model(
            model, name="model", registered_model_name="streamed-digits",
            serialization_format="pickle", pip_requirements=["torch"],
        )  # fmt: skip
    client = MlflowClient(uri, uri)
    version = str(info.registered_model_version)
    client.set_model_version_tag(
        "streamed-digits", version, "infgate.train_data", str(files["train"])
    )
    out = {}
    for mode in ("never", "always"):
        store = Store.from_url(f"sqlite:///{root}/{mode}.db")
        store.upgrade()
        config = _config(root / f"reg-{mode}").with_overrides(**{"data.stream": mode})  # type: ignore[attr-defined]
        out[mode] = run_scan(
            f"models:/streamed-digits/{version}",
            eval_uri=str(files["eval"]),
            store=store,
            config=config,
            settings=Settings(tracking_uri=uri),
        )
        with store.read_session() as session:  # the stored features of every finding
            out[f"{mode}-stored"] = dict(
                session.execute(
                    select(Finding.example_id, Finding.features).where(
                        Finding.scan_id == out[mode].scan_id, Finding.kind == "label_error"
                    )
                ).all()
            )
    _same_findings(out["never"], out["always"])
    a, b = out["never-stored"], out["always-stored"]
    assert a.keys() == b.keys() and len(a) > 0
    assert all(np.allclose(a[k], b[k], rtol=0, atol=0) for k in a)


def test_sharded_ranking_reads_streamed_shards(
    files: dict[str, Path], model: torch.nn.Module
) -> None:
    """``shard_size`` on streamed data: each shard reads its rows from the file; the same
    ranking as the one-sweep, in-memory search."""
    from infgate.detect import find_label_errors

    memory, streamed, _ = _both(files)
    a = find_label_errors(model, memory, progress=False)  # type: ignore[arg-type]
    b = find_label_errors(model, streamed, progress=False, shard_size=70)  # type: ignore[arg-type]
    assert list(a["example_id"]) == list(b["example_id"])
    np.testing.assert_allclose(a["score"], b["score"], rtol=1e-6, atol=1e-9)
