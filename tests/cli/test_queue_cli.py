"""``infgate db | annotator | queue`` end to end through ``main()`` on real stores."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from infgate.review.annotators import authenticate_token
from infgate.review.queue import claim_next
from infgate.store import Store
from infgate.store.engine import head_revision
from infgate.store.models import Annotator, Decision
from sqlalchemy import select

from tests.cli.conftest import Run, Seeded, seed_scan


def _tsv(text: str) -> list[list[str]]:
    return [line.split("\t") for line in text.splitlines() if line]


def test_round_trip(run: Run, db_url: str, tmp_path: Path) -> None:
    res = run("queue", "list", "--db", db_url)
    assert res.code == 1 and "infgate db upgrade" in res.err
    res = run("db", "upgrade", "--db", db_url)
    assert res.code == 0 and head_revision() in res.out
    store = Store.from_url(db_url)
    seeded = seed_scan(store, tmp_path)
    scan_id, data = seeded.scan_id, seeded.data
    res = run("annotator", "add", "alice", "--db", db_url)
    assert res.code == 0
    token = re.search(r"igt_\S+", res.out)
    assert token is not None
    res = run("annotator", "add", "alice", "--db", db_url)
    assert res.code == 1 and "already exists" in res.err
    with store.session() as s:
        hashes = s.execute(select(Annotator.token_hash)).all()
    assert all(token.group(0) not in str(row) for row in hashes)

    res = run("queue", "enqueue", str(scan_id), "--db", db_url)
    assert res.code == 0 and "enqueued 3" in res.out
    res = run("queue", "next", "-a", "alice", "--db", db_url)
    assert res.code == 0 and "row0" in res.out
    item_id = int(re.search(r"queue decide (\d+)", res.out).group(1))  # type: ignore[union-attr]
    res = run(
        "queue", "decide", item_id, "relabel", "--label", "wolf", "-a", "alice", "--db", db_url
    )
    assert res.code == 1 and "'wolf' is not a class" in res.err
    target = "fox" if data.classes[data.labels[0]] != "fox" else "cat"  # type: ignore[index]
    res = run(
        "queue", "decide", item_id, "relabel", "--label", target, "-a", "alice", "--db", db_url
    )
    assert res.code == 0 and "item is now done" in res.out
    res = run("queue", "decide", "999", "keep", "-a", "alice", "--db", db_url)
    assert res.code == 1 and "no queue item with id 999" in res.err

    tasks_path, config_path = tmp_path / "tasks.json", tmp_path / "config.xml"
    res = run("queue", "export", tasks_path, "--config", config_path, "--db", db_url)
    assert res.code == 0 and "wrote 2 task(s)" in res.out
    tasks = json.loads(tasks_path.read_text())
    assert '<Table name="example"' in config_path.read_text()
    choice = {
        "from_name": "label",
        "to_name": "example",
        "type": "choices",
        "value": {"choices": ["Not a valid example"]},
    }
    export = [
        {
            "id": 1,
            "data": tasks[0]["data"],
            "meta": tasks[0]["meta"],
            "annotations": [
                {"id": 1, "completed_by": 1, "was_cancelled": False, "result": [choice]}
            ],
        }
    ]
    ls_path = tmp_path / "ls.json"
    ls_path.write_text(json.dumps(export))
    res = run("queue", "import", ls_path, "--db", db_url)
    assert res.code == 0 and "imported 1 decision(s)" in res.out
    res = run("queue", "stats", "--db", db_url)
    assert res.code == 0 and ["done", "2"] in _tsv(res.out)

    corrected = tmp_path / "corrected.parquet"
    res = run("queue", "apply", "--scan", scan_id, "--out", corrected, "--db", db_url)
    assert res.code == 0, res
    assert "1 relabeled, 1 dropped" in res.out
    frame = pd.read_parquet(corrected)
    assert len(frame) == 11
    assert frame.set_index("example_id").loc["row0", "label"] == data.classes.index(target)  # type: ignore[union-attr]
    with store.session() as s:
        assert len(s.scalars(select(Decision.id)).all()) == 2
    store.dispose()


def test_queue_list_mixes_claimed_and_unclaimed_items(run: Run, seeded: Seeded) -> None:
    url = seeded.url
    assert run("annotator", "add", "bob", "--db", url).code == 0
    assert run("queue", "enqueue", seeded.scan_id, "--db", url).code == 0
    held = claim_next(seeded.store, "bob")  # one claimed, two pending: NaT next to times
    assert held is not None
    res = run("queue", "list", "--db", url)
    assert res.code == 0, res
    rows = _tsv(res.out)
    header, body = rows[0], rows[1:]
    assert header[:3] == ["item", "state", "scan"] and len(body) == 3
    by_state = {r[header.index("state")]: r for r in body}
    assert by_state["claimed"][header.index("held by")] == "bob"
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", by_state["claimed"][header.index("lease until")]
    )
    assert by_state["pending"][header.index("lease until")] == "-"

    res = run("queue", "list", "--json", "--db", url)
    items = json.loads(res.out)
    assert res.code == 0 and len(items) == 3
    claimed = [i for i in items if i["state"] == "claimed"]
    pending = [i for i in items if i["state"] == "pending"]
    assert len(claimed) == 1 and claimed[0]["claimed_by"] == "bob"
    assert claimed[0]["lease_expires_at"].startswith(str(held.lease_expires_at.date()))  # type: ignore[union-attr]
    assert all(i["lease_expires_at"] is None and i["claimed_by"] is None for i in pending)


def test_enqueue_twice_queues_nothing_twice(run: Run, seeded: Seeded) -> None:
    url = seeded.url
    assert "enqueued 3" in run("queue", "enqueue", seeded.scan_id, "--db", url).out
    assert "enqueued 0" in run("queue", "enqueue", seeded.scan_id, "--db", url).out
    stats = json.loads(run("queue", "stats", "--json", "--db", url).out)
    assert stats["items"] == 3 and stats["pending"] == 3


@pytest.mark.parametrize(
    "args",
    [
        ["db", "current"],
        ["db", "upgrade"],
        ["queue", "stats"],
        ["queue", "list"],
        ["annotator", "list"],
    ],
)
def test_json_is_one_document_on_stdout(run: Run, seeded: Seeded, args: list[str]) -> None:
    res = run(*args, "--json", "--db", seeded.url)
    assert res.code == 0, res
    json.loads(res.out)  # the whole of stdout is one JSON document


def test_db_current_json_names_the_revisions(run: Run, seeded: Seeded) -> None:
    doc = json.loads(run("db", "current", "--json", "--db", seeded.url).out)
    assert doc["revision"] == doc["head"] == head_revision() and doc["up_to_date"] is True


def test_long_ids_are_not_truncated_when_piped(run: Run, store: Store, tmp_path: Path) -> None:
    seeded = seed_scan(store, tmp_path, long_ids=True)
    assert run("queue", "enqueue", seeded.scan_id, "--db", seeded.url).code == 0
    out = run("queue", "list", "--db", seeded.url).out
    for i in range(3):
        assert "row-" + "x" * 70 + f"-{i}" in out.split()
    assert "…" not in out and "..." not in out


def test_revoke_and_deactivate_an_annotator(run: Run, seeded: Seeded) -> None:
    url = seeded.url
    assert run("annotator", "add", "carol", "--db", url).code == 0
    assert run("queue", "enqueue", seeded.scan_id, "--db", url).code == 0
    first = re.search(r"igt_\S+", run("annotator", "token", "carol", "--db", url).out)
    assert first is not None
    store = Store.from_url(url)
    assert authenticate_token(store, first.group(0)) is not None
    second = re.search(r"igt_\S+", run("annotator", "token", "carol", "--db", url).out)
    assert second is not None and second.group(0) != first.group(0)
    assert authenticate_token(store, first.group(0)) is None  # the old token is void
    assert authenticate_token(store, second.group(0)) is not None
    res = run("annotator", "revoke", "carol", "--db", url)
    assert res.code == 0 and "revoked" in res.out
    assert authenticate_token(store, second.group(0)) is None
    res = run("annotator", "token", "nobody", "--db", url)
    assert res.code == 1 and "nobody" in res.err
    res = run("annotator", "deactivate", "carol", "--db", url)
    assert res.code == 0 and "deactivated" in res.out
    res = run("annotator", "token", "carol", "--db", url)
    assert res.code == 1 and "deactivated" in res.err
    people = json.loads(run("annotator", "list", "--json", "--db", url).out)
    assert people == [{"id": people[0]["id"], "name": "carol", "active": False}]
    res = run("queue", "next", "-a", "carol", "--db", url)
    assert res.code == 1 and "carol" in res.err
    res = run("annotator", "revoke", "nobody", "--db", url)
    assert res.code == 1 and "nobody" in res.err
