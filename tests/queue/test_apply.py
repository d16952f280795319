"""`apply_decisions`: a corrected dataset version in parquet, in the store and in MLflow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from infgate.data.training import TrainingData
from infgate.errors import DatasetMismatchError
from infgate.review.queue import apply_decisions, claim_next, decide, enqueue_scan
from infgate.store import ScanRecord, Store
from infgate.store.models import DatasetVersion
from sqlalchemy import select


def _data(n: int = 20) -> TrainingData:
    rng = np.random.default_rng(3)
    return TrainingData(
        features=rng.random((n, 64)).astype(np.float32),
        labels=rng.integers(0, 10, n),
        example_ids=[f"img{i}" for i in range(n)],
        classes=tuple(str(c) for c in range(10)),
        image_shape=(8, 8),
        name="digits-sample",
    )


def _scan(store: Store, data: TrainingData, n_flagged: int) -> int:
    k = len(data.classes) if data.classes else 10
    findings = pd.DataFrame(
        {
            "example_id": data.example_ids[:n_flagged],
            "score": np.arange(n_flagged, 0, -1, dtype=float),
            "rank": np.arange(1, n_flagged + 1),
            "given_label": data.labels[:n_flagged],
            "predicted_label": (data.labels[:n_flagged] + 1) % k,
            "suggested_label": (data.labels[:n_flagged] + 1) % k,
            "suggestion_confidence": 0.9,
            "is_suspect": True,
            "kind": "label_error",
            "features": list(data.features[:n_flagged]),
        }
    )
    record = ScanRecord(
        model_name="digits-clf",
        model_version="4",
        run_id=None,
        dataset_hash=data.content_hash,
        dataset_uri=None,
        n_rows=len(data),
        classes=list(data.classes or ()),
        config={"method": "exact"},
        method="exact",
        damping=1e-3,
        timings={},
        findings=findings,
        mismatch=None,
        image_shape=(8, 8),
    )
    return store.record_scan(record)


@pytest.mark.filterwarnings("ignore::UserWarning")  # MLflow's schema-inference hints
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_apply_writes_parquet_store_row_and_mlflow_input(store: Store, tmp_path: Path) -> None:
    import mlflow

    data = _data()
    scan_id = _scan(store, data, 3)
    enqueue_scan(store, scan_id)
    from infgate.review.annotators import add_annotator

    add_annotator(store, "alice")
    done = []
    for action in ("relabel", "invalid", "keep"):
        item = claim_next(store, "alice")
        assert item is not None
        label = str((int(str(item.given_label)) + 5) % 10) if action == "relabel" else None
        decide(store, item.item_id, "alice", action, label=label)  # type: ignore[arg-type]
        done.append((item.example_id, action, label))
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "corrected.parquet"
    applied = apply_decisions(store, data, scan_id=scan_id, out_path=out, tracking_uri=tracking)
    assert (applied.n_relabeled, applied.n_dropped, applied.n_kept) == (1, 1, 1)
    frame = pd.read_parquet(out)
    assert len(frame) == len(data) - 1
    ids = list(frame["example_id"])
    (relabeled, _, new_label), (dropped, _, _), (kept, _, _) = done
    assert dropped not in ids
    row = frame.set_index("example_id")
    assert str(row.loc[relabeled, "label"]) == new_label
    orig = dict(zip(map(str, data.example_ids), data.labels, strict=True))
    assert row.loc[kept, "label"] == orig[kept]
    untouched = [e for e in ids if e not in {relabeled, kept}]
    assert all(row.loc[e, "label"] == orig[e] for e in untouched)
    with store.session() as s:
        dv = s.get(DatasetVersion, applied.dataset_version_id)
        parent = s.scalar(
            select(DatasetVersion).where(DatasetVersion.content_hash == data.content_hash)
        )
        assert dv is not None and parent is not None
        assert dv.parent_id == parent.id and dv.n_rows == len(data) - 1
        assert dv.source_uri == str(out) and dv.mlflow_run_id == applied.mlflow_run_id
    reloaded = TrainingData.from_frame(frame, classes=data.classes, image_shape=(8, 8))
    assert reloaded.content_hash == applied.content_hash
    run = mlflow.MlflowClient(tracking, tracking).get_run(str(applied.mlflow_run_id))
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == f"corrected-scan-{scan_id}"
    assert inp.dataset.source_type == "local"
    assert run.data.params["n_relabeled"] == "1" and run.data.params["n_dropped"] == "1"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_apply_refuses_another_dataset(store: Store, tmp_path: Path) -> None:
    data = _data()
    scan_id = _scan(store, data, 2)
    other = data.with_labels((data.labels + 1) % 10)
    with pytest.raises(DatasetMismatchError, match="content hash"):
        apply_decisions(store, other, scan_id=scan_id, out_path=tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()


def _png(value: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("layout", ["tokens", "images"])
def test_corrected_version_keeps_the_files_layout(
    store: Store, tmp_path: Path, layout: str
) -> None:
    """A file the scan read with a plan (ragged tokens padded with id 0; PNG bytes scaled)
    is read back with the plan stored with the scan's dataset version, and the corrected
    version keeps every column as the file stores it (token lists unpadded, PNG bytes,
    metadata, true labels, class names): only the decided labels change and the dropped
    row goes. Read with the default rules instead, the file is a different dataset (its
    hash differs) or cannot be read at all."""
    import pyarrow.parquet as pq
    from infgate.data.columns import ColumnOptions, resolve_columns, with_sequence_length
    from infgate.data.decode import longest_sequence
    from infgate.review.annotators import add_annotator
    from infgate.review.queue import scanned_dataset

    rng = np.random.default_rng(7)
    n, classes = 12, ("neg", "pos", "mixed")
    if layout == "tokens":
        feature = [rng.integers(1, 30, k) for k in rng.integers(2, 9, n)]
        opts = ColumnOptions(pad_token_id=0)
    else:
        feature = [_png(int(v)) for v in rng.integers(0, 256, n)]
        opts = ColumnOptions(image_scale=255.0)
    df = pd.DataFrame(
        {
            "example_id": [f"doc-{i}" for i in range(n)],
            "x": feature,
            "source": ["forum", "mail"] * (n // 2),
            "true_label": [classes[i % 3] for i in range(n)],
            "label": pd.Categorical([classes[(i * 2) % 3] for i in range(n)], categories=classes),
        }
    )
    src = tmp_path / "train.parquet"
    df.to_parquet(src, index=False)
    table = pq.read_table(src)
    plan = resolve_columns(table.schema, opts)
    if layout == "tokens":
        plan = with_sequence_length(plan, longest_sequence(table.column("x")))
    data = TrainingData.from_table(table, plan, classes=classes, source_uri=str(src))
    scan_id = _scan(store, data, 2)
    with store.session() as s:  # what the scan's store stage records with the version
        dv = s.scalar(
            select(DatasetVersion).where(DatasetVersion.content_hash == data.content_hash)
        )
        assert dv is not None
        dv.columns = plan.to_dict()
        dv.classes = list(classes)
        dv.image_shape = list(data.image_shape) if data.image_shape else None
    enqueue_scan(store, scan_id)
    add_annotator(store, "alice")
    first = claim_next(store, "alice")
    assert first is not None
    decide(store, first.item_id, "alice", "relabel", label="mixed")
    second = claim_next(store, "alice")
    assert second is not None
    decide(store, second.item_id, "alice", "invalid")

    back = scanned_dataset(store, scan_id, src)
    assert back.plan == plan and back.data.content_hash == data.content_hash
    out = tmp_path / "corrected.parquet"
    applied = apply_decisions(store, back, scan_id=scan_id, out_path=out)
    assert (applied.n_relabeled, applied.n_dropped) == (int(first.given_label != "mixed"), 1)
    got = pq.read_table(out)
    assert got.schema.names == table.schema.names
    assert got.schema.field("x").type == table.schema.field("x").type
    assert got.schema.field("label").type == table.schema.field("label").type  # categorical
    frame, orig = got.to_pandas().set_index("example_id"), df.set_index("example_id")
    assert second.example_id not in frame.index and len(frame) == n - 1
    assert frame.loc[first.example_id, "label"] == "mixed"
    for e in frame.index:
        if e != first.example_id:
            assert frame.loc[e, "label"] == orig.loc[e, "label"]
        assert frame.loc[e, "source"] == orig.loc[e, "source"]
        assert frame.loc[e, "true_label"] == orig.loc[e, "true_label"]
        np.testing.assert_array_equal(np.asarray(frame.loc[e, "x"]), np.asarray(orig.loc[e, "x"]))
    reread = TrainingData.from_table(got, plan, classes=classes)
    assert reread.content_hash == applied.content_hash
    with store.session() as s:
        new = s.get(DatasetVersion, applied.dataset_version_id)
        assert new is not None and new.columns == plan.to_dict()

    with store.session() as s:  # a version stored without a plan: default rules
        dv = s.scalar(
            select(DatasetVersion).where(DatasetVersion.content_hash == data.content_hash)
        )
        assert dv is not None
        dv.columns = None
    if layout == "tokens":  # ragged and unpadded: refused, naming the fix
        with pytest.raises(Exception, match="pad_token_id"):
            scanned_dataset(store, scan_id, src)
    else:  # pixels not scaled: another dataset, refused by the hash check
        with pytest.raises(DatasetMismatchError, match="content hash"):
            apply_decisions(store, scanned_dataset(store, scan_id, src), scan_id=scan_id)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_apply_without_changes_leaves_the_scanned_version_alone(
    store: Store, tmp_path: Path
) -> None:
    """Only "keep" decisions: the corrected data is the scanned version itself, which stays
    as it was (not its own parent, its source still the scanned file)."""
    from infgate.review.annotators import add_annotator

    data = _data()
    scan_id = _scan(store, data, 2)
    with store.session() as s:
        dv = s.scalar(
            select(DatasetVersion).where(DatasetVersion.content_hash == data.content_hash)
        )
        assert dv is not None
        dv.source_uri = "/data/train.parquet"
    enqueue_scan(store, scan_id)
    add_annotator(store, "alice")
    item = claim_next(store, "alice")
    assert item is not None
    decide(store, item.item_id, "alice", "keep")
    out = tmp_path / "same.parquet"
    applied = apply_decisions(store, data, scan_id=scan_id, out_path=out)
    assert (applied.n_relabeled, applied.n_dropped, applied.n_kept) == (0, 0, 1)
    assert applied.content_hash == data.content_hash and out.exists()
    with store.session() as s:
        dv = s.get(DatasetVersion, applied.dataset_version_id)
        assert dv is not None and dv.content_hash == data.content_hash
        assert dv.parent_id is None and dv.source_uri == "/data/train.parquet"
