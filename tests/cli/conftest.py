"""Fixtures of the CLI tests: the real ``main()`` (exit codes as a shell sees them) on real
stores (SQLite file, and PostgreSQL when ``INFGATE_TEST_PG_URL`` is set)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from infgate.data.training import TrainingData
from infgate.plugins.cli.app import main
from infgate.store import ScanRecord, Store

from tests.store.fixtures import db_url, store  # noqa: F401


@dataclass(frozen=True)
class Outcome:
    """What a shell would see: exit status, stdout, stderr."""

    code: int
    out: str
    err: str


Run = Callable[..., Outcome]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """``run("queue", "list", ...)``: the console script's ``main()`` with these arguments."""

    def _run(*args: str) -> Outcome:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return _run


@dataclass(frozen=True)
class Seeded:
    """A migrated store holding one scan of 12 tabular rows with 3 suspects."""

    url: str
    store: Store
    scan_id: int
    data: TrainingData
    data_path: Path


def seed_scan(st: Store, tmp_path: Path, *, long_ids: bool = False) -> Seeded:
    """Record a scan whose training data lies in ``tmp_path/train.parquet``."""
    rng = np.random.default_rng(0)
    prefix = "row-" + "x" * 70 + "-" if long_ids else "row"
    data = TrainingData(
        features=rng.random((12, 4)).astype(np.float32),
        labels=rng.integers(0, 3, 12),
        example_ids=[f"{prefix}{i}" for i in range(12)],
        classes=("cat", "dog", "fox"),
        feature_names=("a", "b", "c", "d"),
    )
    path = tmp_path / "train.parquet"
    data.to_frame().to_parquet(path, index=False)
    findings = pd.DataFrame(
        {
            "example_id": [f"{prefix}{i}" for i in range(3)],
            "score": [3.0, 2.0, 1.0],
            "rank": [1, 2, 3],
            "given_label": data.labels[:3],
            "predicted_label": (data.labels[:3] + 1) % 3,
            "suggested_label": (data.labels[:3] + 1) % 3,
            "suggestion_confidence": [0.9, 0.8, 0.7],
            "is_suspect": True,
            "kind": "label_error",
            "features": list(data.features[:3]),
        }
    )
    record = ScanRecord(
        model_name="pets",
        model_version="2",
        run_id=None,
        dataset_hash=data.content_hash,
        dataset_uri=str(path),
        n_rows=12,
        classes=["cat", "dog", "fox"],
        config={},
        method="exact",
        damping=0.01,
        timings={},
        findings=findings,
        mismatch=None,
        feature_names=["a", "b", "c", "d"],
    )
    scan_id = st.record_scan(record)
    return Seeded(str(st.engine.url.render_as_string(hide_password=False)), st, scan_id, data, path)


@pytest.fixture
def seeded(store: Store, tmp_path: Path) -> Seeded:  # noqa: F811
    """A store with one scan (3 suspects) and its training data file."""
    return seed_scan(store, tmp_path)
