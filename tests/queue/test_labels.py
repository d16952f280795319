"""Labels are checked against the model's output count wherever one enters (the queue API,
the review page, the Label Studio import, ``queue apply``); ids are ids, never booleans,
and never beyond the database's integer range."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from infgate.data.training import TrainingData
from infgate.errors import InvalidInputError
from infgate.plugins.review_ui import create_app
from infgate.review.decisions import MAX_ID, check_label
from infgate.review.labelstudio import export_tasks, import_annotations
from infgate.review.queue import apply_decisions, claim_next, decide, enqueue_scan, get_item
from infgate.settings import Settings
from infgate.store import ScanRecord, Store
from infgate.store.models import Decision, QueueItem
from sqlalchemy import func, select, update

from tests.queue.test_labelstudio import _as_label_studio_export
from tests.store.fixtures import make_record


def _n_decisions(store: Store) -> int:
    with store.session() as s:
        return int(s.scalar(select(func.count()).select_from(Decision)) or 0)


@pytest.fixture
def unnamed(store: Store) -> int:
    """A scan of a 10-output model over a dataset that names no classes."""
    record = dataclasses.replace(make_record(4), classes=None, n_outputs=10)
    scan_id = store.record_scan(record)
    enqueue_scan(store, scan_id)
    return scan_id


def test_the_rule() -> None:
    assert check_label("9", None, 10) == "9" and check_label("09", None, 10) == "9"
    assert check_label("1", None, 1) == "1"  # one output: a binary model, classes 0 and 1
    for label, classes, n_outputs, message in [
        ("999", None, 10, "only 10 classes"),
        ("10", None, 10, "only 10 classes"),
        ("2", None, 1, "only 2 classes"),
        ("٣", None, 10, "not a class index"),  # str.isdigit() says yes; not an index
        ("-1", None, 10, "not a class index"),
        (True, None, 10, "needs a label"),
        ("eel", ["cat", "dog", "eel"], 2, "only 2 classes"),  # named, beyond the outputs
        ("owl", ["cat", "dog"], None, "not a class of this dataset"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            check_label(label, classes, n_outputs)


def test_queue_api_refuses_a_class_the_model_lacks(
    store: Store, unnamed: int, annotators: dict[str, str]
) -> None:
    item = claim_next(store, "alice")
    assert item is not None and item.classes is None and item.n_outputs == 10
    with pytest.raises(InvalidInputError, match="'999' is class 999, but the model has only 10"):
        decide(store, item.item_id, "alice", "relabel", label="999")
    assert _n_decisions(store) == 0
    res = decide(store, item.item_id, "alice", "relabel", label="9")
    assert res.label_after == "9" or res.action == "keep"
    assert store.get_scan(unnamed).n_outputs == 10


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_review_page_refuses_a_class_the_model_lacks(
    store: Store, unnamed: int, annotators: dict[str, str]
) -> None:
    client = TestClient(create_app(store, Settings()))
    auth = {"authorization": f"Bearer {annotators['alice']}"}
    item = client.get("/api/next", headers=auth).json()["item"]
    body = {"item_id": item["item_id"], "action": "relabel", "label": "999"}
    r = client.post("/api/decisions", headers=auth, json=body)
    assert r.status_code == 400 and "only 10 classes" in r.json()["detail"]
    r = client.post(
        "/decide", headers=auth, data={"item_id": item["item_id"], "decision": "relabel:999"}
    )
    assert r.status_code == 400
    page = client.get("/", headers=auth).text  # the buttons offer the model's ten classes
    assert 'value="relabel:9"' in page and 'value="relabel:10"' not in page
    assert _n_decisions(store) == 0


def test_label_studio_import_refuses_a_class_the_model_lacks(
    store: Store, unnamed: int, tmp_path: Path
) -> None:
    tasks = export_tasks(store, scan_id=unnamed)
    export = _as_label_studio_export(tasks, [["999"]] + [[]] * (len(tasks) - 1))
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    with pytest.raises(InvalidInputError, match=r"task #0 .*only 10 classes"):
        import_annotations(store, path)
    assert _n_decisions(store) == 0


@pytest.mark.parametrize(
    ("finding_id", "message"),
    [
        (True, "finding_id True is not an integer"),
        (False, "finding_id False is not an integer"),
        (10**30, r"finding_id must be in \[1, 2147483647\], got 1000000000000000000"),
        ("1" * 31, r"finding_id must be in \[1, 2147483647\]"),
        (0, r"finding_id must be in \[1"),
        (1.0, "finding_id 1.0 is not an integer"),
    ],
)
def test_label_studio_ids_are_integer_ids(
    store: Store, unnamed: int, tmp_path: Path, finding_id: object, message: str
) -> None:
    tasks = export_tasks(store, scan_id=unnamed)
    export = _as_label_studio_export(tasks, [[str(t["data"]["given_label"])] for t in tasks])
    export[0]["meta"]["finding_id"] = finding_id
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    with pytest.raises(InvalidInputError, match=message) as err:
        import_annotations(store, path)
    assert "\n" not in str(err.value) and len(str(err.value)) < 200  # one line
    assert _n_decisions(store) == 0


def test_queue_ids_beyond_the_integer_range_are_one_line_errors(
    store: Store, unnamed: int, annotators: dict[str, str]
) -> None:
    for bad in (10**30, 2**63, MAX_ID + 1, 0, True):
        with pytest.raises(InvalidInputError, match="queue item id must be"):
            decide(store, bad, "alice", "keep")  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="queue item id must be"):
            get_item(store, bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="annotator id must be"):
        claim_next(store, 10**30)
    assert _n_decisions(store) == 0


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_queue_apply_refuses_a_decided_class_the_model_lacks(store: Store, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    data = TrainingData(
        features=rng.random((6, 4)).astype(np.float32),
        labels=rng.integers(0, 10, 6),
        example_ids=[f"row{i}" for i in range(6)],
        name="unnamed-classes",
    )
    findings = pd.DataFrame(
        {
            "example_id": data.example_ids[:2],
            "score": [2.0, 1.0],
            "rank": [1, 2],
            "given_label": data.labels[:2],
            "kind": "label_error",
        }
    )
    record = ScanRecord(
        model_name="tabular",
        model_version="1",
        run_id=None,
        dataset_hash=data.content_hash,
        dataset_uri=None,
        n_rows=len(data),
        classes=None,
        config={"method": "exact"},
        method="exact",
        damping=1e-3,
        timings={},
        findings=findings,
        mismatch=None,
        n_outputs=10,
    )
    scan_id = store.record_scan(record)
    enqueue_scan(store, scan_id)
    with store.session() as s:  # a decision stored before labels were checked
        first = s.scalar(select(func.min(QueueItem.id)))
        s.execute(
            update(QueueItem)
            .where(QueueItem.id == first)
            .values(state="done", final_action="relabel", final_label="999")
        )
    out = tmp_path / "corrected.parquet"
    with pytest.raises(InvalidInputError, match=f"queue item {first} decided '999'.*only 10"):
        apply_decisions(store, data, scan_id=scan_id, out_path=out)
    assert not out.exists()
