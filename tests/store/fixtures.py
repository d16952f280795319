"""Store fixtures shared by tests/store, tests/queue and tests/review_ui.

``db_url`` is parametrised over SQLite (a file in tmp_path) and the real PostgreSQL server
(a fresh schema per test, dropped afterwards), so each test starts from an empty store.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from infgate.review.annotators import add_annotator
from infgate.store import ScanRecord, Store
from sklearn.datasets import load_digits
from sqlalchemy import create_engine

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def with_schema(base: str, schema: str) -> str:
    """``base`` URL whose connections use ``schema`` as search_path."""
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture(params=BACKENDS)
def db_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db')}/store.db"
        return
    base = request.getfixturevalue("pg_url")
    schema = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield with_schema(base, schema)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A store at the current schema revision."""
    st = Store.from_url(db_url)
    st.upgrade()
    yield st
    st.dispose()


def make_record(
    n: int = 30,
    *,
    seed: int = 0,
    image: bool = True,
    model_version: str = "1",
    config: dict | None = None,
    n_classes: int = 10,
) -> ScanRecord:
    """A scan of ``n`` 8x8 examples (or 4-column tabular rows) with known findings."""
    rng = np.random.default_rng(seed)
    if image:  # real 8x8 digits, so the review page shows something a person can read
        digits = load_digits().data / 16.0
        feats = digits[rng.integers(0, len(digits), n)]
    else:
        feats = rng.random((n, 4)) * [80, 1e5, 1, 20]
    given = rng.integers(0, n_classes, n)
    suggested = (given + 1) % n_classes
    scores = np.sort(rng.random(n) * 10)[::-1]
    findings = pd.DataFrame(
        {
            "example_id": [f"ex{i}" for i in range(n)],
            "score": scores,
            "rank": np.arange(1, n + 1),
            "given_label": given,
            "predicted_label": suggested,
            "suggested_label": suggested,
            "suggestion_confidence": np.linspace(0.99, 0.5, n),
            "is_suspect": [True] * n,
            "kind": "label_error",
            "features": list(feats),
        }
    )
    explanations = pd.DataFrame(
        {
            "example_id": ["ex0", "ex0", "ex0"],
            "train_example_id": ["ex5", "ex6", "ex7"],
            "influence": [-0.5, -0.25, 0.75],
            "role": ["supporting", "supporting", "opposing"],
        }
    )
    return ScanRecord(
        model_name="digits-clf",
        model_version=model_version,
        run_id="run123",
        dataset_hash="d" * 64,
        dataset_uri=None,
        n_rows=n,
        classes=[str(c) for c in range(n_classes)],
        config=config or {"method": "exact", "damping": 1e-3},
        method="exact",
        damping=1e-3,
        timings={"total": 1.5},
        findings=findings,
        mismatch={
            "statistic": 0.1,
            "p_value": 0.4,
            "flagged": False,
            "alpha": 0.05,
            "method": "mmd",
        },
        image_shape=(8, 8) if image else None,
        feature_names=None if image else ["age", "income", "score", "visits"],
        explanations=explanations,
    )


@pytest.fixture
def annotators(store: Store) -> dict[str, str]:
    """Three annotators with tokens: alice, bob, carol."""
    return {name: str(add_annotator(store, name)) for name in ("alice", "bob", "carol")}
