"""`infgate db|annotator|queue` end to end through the real CLI (typer's runner)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from infgate.data.training import TrainingData
from infgate.plugins.cli.app import app
from infgate.store import ScanRecord, Store
from infgate.store.models import Annotator, Decision
from sqlalchemy import select
from typer.testing import CliRunner

runner = CliRunner()


def _run(*args: str, input_text: str | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), input=input_text, env={"COLUMNS": "200"})
    return result.exit_code, result.output


def _record(store: Store, tmp_path: Path) -> tuple[int, TrainingData]:
    rng = np.random.default_rng(0)
    data = TrainingData(
        features=rng.random((12, 4)).astype(np.float32),
        labels=rng.integers(0, 3, 12),
        example_ids=[f"row{i}" for i in range(12)],
        classes=("cat", "dog", "fox"),
        feature_names=("a", "b", "c", "d"),
    )
    path = tmp_path / "train.parquet"
    data.to_frame().to_parquet(path, index=False)
    findings = pd.DataFrame(
        {
            "example_id": ["row0", "row1", "row2"],
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
    return store.record_scan(record), data


def test_cli_round_trip(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, out = _run("queue", "list", "--db", db_url)
    assert code == 1 and "infgate db upgrade" in out
    code, out = _run("db", "upgrade", "--db", db_url)
    assert code == 0 and "0001" in out
    store = Store.from_url(db_url)
    scan_id, data = _record(store, tmp_path)
    code, out = _run("annotator", "add", "alice", "--db", db_url)
    assert code == 0
    token = re.search(r"igt_\S+", out)
    assert token is not None
    code, out = _run(
        "annotator",
        "add",
        "bob",
        "--password",
        "--db",
        db_url,
        input_text="s3cret-pass\ns3cret-pass\n",
    )
    assert code == 0
    with store.session() as s:
        stored = s.execute(select(Annotator.token_hash, Annotator.password_hash)).all()
    assert all(token.group(0) not in str(row) and "s3cret-pass" not in str(row) for row in stored)
    assert all(str(h).startswith("scrypt$") for row in stored for h in row if h is not None)
    code, out = _run("annotator", "add", "alice", "--db", db_url)
    assert code == 1 and "already exists" in out

    code, out = _run("queue", "enqueue", str(scan_id), "--db", db_url)
    assert code == 0 and "enqueued 3" in out
    code, out = _run("queue", "list", "--db", db_url)
    assert code == 0 and all(f"row{i}" in out for i in range(3))
    code, out = _run("queue", "next", "-a", "alice", "--db", db_url)
    assert code == 0 and "row0" in out
    item_id = int(re.search(r"queue decide (\d+)", out).group(1))  # type: ignore[union-attr]
    code, out = _run(
        "queue", "decide", str(item_id), "relabel", "--label", "wolf", "-a", "alice", "--db", db_url
    )
    assert code == 1 and "'wolf' is not a class" in out
    target = "fox" if data.classes[data.labels[0]] != "fox" else "cat"  # type: ignore[index]
    code, out = _run(
        "queue", "decide", str(item_id), "relabel", "--label", target, "-a", "alice", "--db", db_url
    )
    assert code == 0 and "item is now done" in out
    code, out = _run("queue", "decide", "999", "keep", "-a", "alice", "--db", db_url)
    assert code == 1 and "no queue item with id 999" in out

    tasks_path, config_path = tmp_path / "tasks.json", tmp_path / "config.xml"
    code, out = _run(
        "queue", "export", str(tasks_path), "--config", str(config_path), "--db", db_url
    )
    assert code == 0 and "wrote 2 task(s)" in out
    tasks = json.loads(tasks_path.read_text())
    assert "example" in tasks[0]["data"] and '<Table name="example"' in config_path.read_text()
    export = [
        {
            "id": i + 1,
            "data": t["data"],
            "meta": t["meta"],
            "annotations": [
                {
                    "id": i + 1,
                    "completed_by": 1,
                    "was_cancelled": False,
                    "result": [
                        {
                            "from_name": "label",
                            "to_name": "example",
                            "type": "choices",
                            "value": {"choices": ["Not a valid example"]},
                        }
                    ],
                }
            ],
        }
        for i, t in enumerate(tasks[:1])
    ]
    ls_path = tmp_path / "ls.json"
    ls_path.write_text(json.dumps(export))
    code, out = _run("queue", "import", str(ls_path), "--db", db_url)
    assert code == 0 and "imported 1 decision(s)" in out
    code, out = _run("queue", "stats", "--db", db_url)
    assert code == 0 and re.search(r"done\s*│\s*2", out)

    corrected = tmp_path / "corrected.parquet"
    code, out = _run(
        "queue", "apply", "--scan", str(scan_id), "--out", str(corrected), "--db", db_url
    )
    assert code == 0, out
    assert "1 relabeled, 1 dropped" in out
    frame = pd.read_parquet(corrected)
    assert len(frame) == 11 and frame.set_index("example_id").loc["row0", "label"] == [
        "cat",
        "dog",
        "fox",
    ].index(target)
    with store.session() as s:
        assert len(s.scalars(select(Decision.id)).all()) == 2
    store.dispose()


def test_help_reads_well() -> None:
    for group in ("queue", "db", "annotator", "ui"):
        code, out = _run(group, "--help")
        assert code == 0 and "Usage" in out
    code, out = _run("queue", "decide", "--help")
    assert code == 0 and "keep, relabel, not_sure or invalid" in out
