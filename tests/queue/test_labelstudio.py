"""Label Studio round trip on files shaped like Label Studio's own import and JSON export."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from infgate.errors import InvalidInputError
from infgate.review.labelstudio import (
    INVALID_CHOICE,
    NOT_SURE_CHOICE,
    export_tasks,
    import_annotations,
    labeling_config,
)
from infgate.review.queue import enqueue_scan, queue_stats
from infgate.store import Store
from infgate.store.models import Decision
from sqlalchemy import func, select

from tests.store.fixtures import make_record


def _as_label_studio_export(tasks: list[dict[str, Any]], choices: list[list[str]]) -> list[Any]:
    """What Label Studio's JSON export holds after people annotated the imported tasks:
    one annotation per listed choice, by users 7, 8, ... (the exact field set LS writes)."""
    out = []
    for t, (task, picks) in enumerate(zip(tasks, choices, strict=True), start=1):
        annotations = [
            {
                "id": 100 * t + u,
                "completed_by": 7 + u,
                "result": [
                    {
                        "value": {"choices": [pick]},
                        "id": f"r{t}x{u}",
                        "from_name": "label",
                        "to_name": "image",
                        "type": "choices",
                        "origin": "manual",
                    }
                ],
                "was_cancelled": False,
                "ground_truth": False,
                "created_at": "2026-11-28T10:00:00.000000Z",
                "updated_at": "2026-11-28T10:00:04.000000Z",
                "draft_created_at": None,
                "lead_time": 4.2,
                "prediction": {},
                "result_count": 0,
                "unique_id": f"00000000-0000-0000-0000-{t:06d}{u:06d}",
                "import_id": None,
                "last_action": None,
                "task": t,
                "project": 3,
                "updated_by": 7 + u,
                "parent_prediction": 50 + t,
                "parent_annotation": None,
                "last_created_by": None,
            }
            for u, pick in enumerate(picks)
        ]
        out.append(
            {
                "id": t,
                "annotations": annotations,
                "file_upload": "2b1c9a7e-infgate_tasks.json",
                "drafts": [],
                "predictions": [50 + t],
                "data": task["data"],
                "meta": task["meta"],
                "created_at": "2026-11-28T09:59:00.000000Z",
                "updated_at": "2026-11-28T10:00:04.000000Z",
                "inner_id": t,
                "total_annotations": len(annotations),
                "cancelled_annotations": 0,
                "total_predictions": 1,
                "comment_count": 0,
                "unresolved_comment_count": 0,
                "last_comment_updated_at": None,
                "project": 3,
                "updated_by": 7,
                "comment_authors": [],
            }
        )
    return out


def _n_decisions(store: Store) -> int:
    with store.session() as s:
        return int(s.scalar(select(func.count()).select_from(Decision)) or 0)


def test_export_matches_label_studio_import_format(store: Store) -> None:
    scan_id = store.record_scan(make_record(5))
    enqueue_scan(store, scan_id)
    tasks = export_tasks(store, scan_id=scan_id)
    assert len(tasks) == 5
    first = tasks[0]
    assert set(first) == {"data", "meta", "predictions"}
    assert first["meta"]["finding_id"] == first["data"]["finding_id"]
    assert first["data"]["image"].startswith("data:image/png;base64,")
    png = base64.b64decode(first["data"]["image"].split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    (pred,) = first["predictions"]
    assert pred["score"] == pytest.approx(store.findings_frame(scan_id)["score"].max())
    (res,) = pred["result"]
    assert res["type"] == "choices" and res["from_name"] == "label" and res["to_name"] == "image"
    assert len(res["value"]["choices"]) == 1
    json.dumps(tasks)  # plain JSON
    config = ET.fromstring(labeling_config([str(c) for c in range(10)], image=True))
    control = config.find("Choices")
    assert (
        control is not None and control.get("name") == "label" and control.get("toName") == "image"
    )
    values = [c.get("value") for c in control.findall("Choice")]
    assert values[-2:] == [NOT_SURE_CHOICE, INVALID_CHOICE] and values[:10] == [
        str(c) for c in range(10)
    ]


def test_import_round_trip_records_decisions(store: Store, tmp_path: Path) -> None:
    scan_id = store.record_scan(make_record(4))
    enqueue_scan(store, scan_id, required_votes=2)
    tasks = export_tasks(store, scan_id=scan_id)
    given = [t["data"]["given_label"] for t in tasks]
    other = str((int(given[0]) + 1) % 10)
    picks = [[other, other], [given[1], given[1]], [INVALID_CHOICE, NOT_SURE_CHOICE], []]
    path = tmp_path / "project-3-at-2026-11-28.json"
    path.write_text(json.dumps(_as_label_studio_export(tasks, picks)))
    summary = import_annotations(store, path)
    assert (summary.tasks, summary.decisions, summary.counted) == (4, 6, 6)
    with store.session() as s:
        rows = s.execute(select(Decision.action, Decision.label_after, Decision.source)).all()
    assert sorted(r.action for r in rows) == [
        "invalid",
        "keep",
        "keep",
        "not_sure",
        "relabel",
        "relabel",
    ]
    assert {r.source for r in rows} == {"labelstudio"}
    stats = queue_stats(store, scan_id=scan_id)
    assert stats.done == 2 and stats.agreement == 1.0  # both answered pairs agreed
    frame = store.unreviewed_findings(scan_id)
    assert len(frame) == 2  # the two items without two agreeing votes


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda ex: ex[0]["meta"].update(finding_id=99999) or ex[0]["data"].pop("finding_id"),
            "finding 99999",
        ),
        (
            lambda ex: ex[1]["annotations"][0]["result"][0]["value"].update(choices=["cat"]),
            "label 'cat'",
        ),
        (lambda ex: ex[1]["annotations"][0].update(result="oops"), "'result' must be a list"),
        (lambda ex: ex[0].pop("meta") and ex[0]["data"].pop("finding_id"), "no meta.finding_id"),
    ],
)
def test_bad_exports_change_nothing(
    store: Store, tmp_path: Path, mutate: Any, message: str
) -> None:
    scan_id = store.record_scan(make_record(3))
    enqueue_scan(store, scan_id)
    tasks = export_tasks(store, scan_id=scan_id)
    export = _as_label_studio_export(tasks, [[t["data"]["given_label"]] for t in tasks])
    mutate(export)
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    with pytest.raises(InvalidInputError, match=message):
        import_annotations(store, path)
    assert _n_decisions(store) == 0


def test_malformed_files_are_refused(store: Store, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a list"')
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        import_annotations(store, bad)
    bad.write_text('{"tasks": []}')
    with pytest.raises(InvalidInputError, match="must be a JSON list of tasks"):
        import_annotations(store, bad)
    with pytest.raises(InvalidInputError, match="does not exist"):
        import_annotations(store, tmp_path / "missing.json")
    assert _n_decisions(store) == 0


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_token_examples_export_as_text_without_padding(store: Store) -> None:
    """Token sequences (the dataset version's plan says int64 arrays) go to Label Studio as
    their ids in order, padding left out, with a Text view in the labeling config."""
    import dataclasses

    import numpy as np

    record = make_record(2, image=False)
    feats = [np.array([4, 8, 15, 0, 0], dtype=float), np.array([16, 23, 42, 0, 0], dtype=float)]
    plan = {"kind": "array", "dtype": "int64", "columns": ["tokens"], "pad_token_id": 0}
    scan_id = store.record_scan(
        dataclasses.replace(
            record,
            findings=record.findings.assign(features=feats),
            image_shape=None,
            feature_names=None,
            columns=plan,
        )
    )
    enqueue_scan(store, scan_id)
    tasks = export_tasks(store, scan_id=scan_id)
    assert sorted(t["data"]["example"] for t in tasks) == ["16 23 42", "4 8 15"]
    assert {t["predictions"][0]["result"][0]["to_name"] for t in tasks} == {"example"}
    config = ET.fromstring(labeling_config(["a", "b"], image=False, tokens=True))
    view = config.find("Text")
    assert view is not None and view.get("name") == "example"
    assert view.get("value") == "$example"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_two_input_example_exports_its_token_ids_only(store: Store) -> None:
    """Stored features of a model of two inputs hold the ids, then the attention mask: only
    the ids go out, padding left out."""
    import dataclasses

    import numpy as np

    record = make_record(1, image=False)
    feats = [np.array([4, 8, 0, 0, 1, 1, 0, 0], dtype=float)]  # ids (pad 0), then the mask
    plan = {"kind": "array", "dtype": "int64", "pad_token_id": 0, "n_inputs": 2}
    scan_id = store.record_scan(
        dataclasses.replace(
            record,
            findings=record.findings.assign(features=feats),
            image_shape=None,
            feature_names=None,
            columns=plan,
        )
    )
    enqueue_scan(store, scan_id)
    (task,) = export_tasks(store, scan_id=scan_id)
    assert task["data"]["example"] == "4 8"
