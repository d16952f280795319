"""Queue semantics: priority and caps, leases, decisions, agreement, bad input."""

from __future__ import annotations

import datetime as dt

import pytest
from infgate.errors import InvalidInputError
from infgate.review.queue import claim_next, decide, enqueue_scan, get_item, queue_stats
from infgate.store import LeaseExpiredError, NotFoundError, Store
from infgate.store.models import Decision, QueueItem
from sqlalchemy import func, select, update

from tests.store.fixtures import make_record


def _decisions(store: Store) -> list[Decision]:
    with store.session() as s:
        return list(s.scalars(select(Decision).order_by(Decision.id)))


def _expire(store: Store, item_id: int) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    with store.session() as s:
        s.execute(update(QueueItem).where(QueueItem.id == item_id).values(lease_expires_at=past))


def test_enqueue_orders_by_score_and_caps_each_class(store: Store) -> None:
    rec = make_record(40, n_classes=3)
    scan_id = store.record_scan(rec)
    assert enqueue_scan(store, scan_id, per_class_cap=4) == 12
    assert enqueue_scan(store, scan_id, per_class_cap=4) == 0  # idempotent
    with store.session() as s:
        items = s.scalars(select(QueueItem).order_by(QueueItem.priority.desc())).all()
    per_class: dict[str, int] = {}
    for it in items:
        label = get_item(store, it.id).given_label
        per_class[str(label)] = per_class.get(str(label), 0) + 1
    assert per_class == {"0": 4, "1": 4, "2": 4}
    # the capped queue holds, for each class, that class's four highest scores
    top = rec.findings.assign(given=rec.findings["given_label"].astype(str))
    expected = set(top.sort_values("score", ascending=False).groupby("given").head(4)["example_id"])
    assert {get_item(store, it.id).example_id for it in items} == expected
    with pytest.raises(InvalidInputError, match="per_class_cap"):
        enqueue_scan(store, scan_id, per_class_cap=0)
    with pytest.raises(NotFoundError, match="scan with id 99"):
        enqueue_scan(store, 99)


def test_claim_decide_each_action(store: Store, annotators: dict[str, str]) -> None:
    scan_id = store.record_scan(make_record(6))
    enqueue_scan(store, scan_id)
    first = claim_next(store, "alice")
    assert first is not None and first.rank == 1 and first.features is not None
    assert claim_next(store, "alice") == first  # a held lease is handed back, not a new item
    other = claim_next(store, "bob")
    assert other is not None and other.item_id != first.item_id
    target = str((int(str(first.given_label)) + 3) % 10)
    res = decide(store, first.item_id, "alice", "relabel", label=target)
    assert (res.label_before, res.label_after, res.item_state) == (
        first.given_label,
        target,
        "done",
    )
    res = decide(store, other.item_id, "bob", "keep", lease_token=other.lease_token)
    assert res.action == "keep" and res.label_after == other.given_label
    third = claim_next(store, "alice")
    assert third is not None
    assert decide(store, third.item_id, "alice", "invalid").item_state == "done"
    fourth = claim_next(store, "alice")
    assert fourth is not None
    res = decide(store, fourth.item_id, "alice", "not_sure")
    assert res.item_state == "pending"  # someone else must decide it
    nxt = claim_next(store, "alice")
    assert nxt is not None and nxt.item_id != fourth.item_id
    assert (
        claim_next(store, "bob") is not None and claim_next(store, "bob").item_id == fourth.item_id
    )  # type: ignore[union-attr]
    stats = queue_stats(store)
    assert (stats.total, stats.done, stats.decided_today) == (6, 3, 4)
    rows = _decisions(store)
    assert [d.action for d in rows] == ["relabel", "keep", "invalid", "not_sure"]
    assert all(d.counted and not d.lease_expired for d in rows)


def test_bad_input_is_refused_and_store_unchanged(store: Store, annotators: dict[str, str]) -> None:
    scan_id = store.record_scan(make_record(3))
    enqueue_scan(store, scan_id)
    item = claim_next(store, "alice")
    assert item is not None
    with pytest.raises(InvalidInputError, match=r"label 'cat' is not a class"):
        decide(store, item.item_id, "alice", "relabel", label="cat")
    with pytest.raises(InvalidInputError, match="relabel needs a label"):
        decide(store, item.item_id, "alice", "relabel")
    with pytest.raises(InvalidInputError, match="action must be one of"):
        decide(store, item.item_id, "alice", "delete")  # type: ignore[arg-type]
    with pytest.raises(NotFoundError, match="queue item with id 4242"):
        decide(store, 4242, "alice", "keep")
    with pytest.raises(NotFoundError, match="'mallory'"):
        decide(store, item.item_id, "mallory", "keep")
    assert _decisions(store) == []
    assert get_item(store, item.item_id).state == "claimed"


def test_expired_lease_returns_item_and_late_decision_is_flagged(
    store: Store, annotators: dict[str, str]
) -> None:
    scan_id = store.record_scan(make_record(2))
    enqueue_scan(store, scan_id)
    mine = claim_next(store, "alice", lease_seconds=60)
    assert mine is not None
    _expire(store, mine.item_id)
    stats = queue_stats(store)
    assert (stats.pending, stats.claimed) == (2, 0)  # the expired lease counts as waiting
    taken = claim_next(store, "bob")
    assert taken is not None and taken.item_id == mine.item_id  # the expired lease came back
    with pytest.raises(LeaseExpiredError, match="recorded") as err:
        decide(store, mine.item_id, "alice", "keep", lease_token=mine.lease_token)
    late = _decisions(store)
    assert len(late) == 1 and late[0].id == err.value.decision_id
    assert late[0].lease_expired and not late[0].counted
    after = get_item(store, mine.item_id)
    assert after.state == "claimed" and after.lease_token == taken.lease_token  # bob still holds it
    assert decide(store, taken.item_id, "bob", "keep").item_state == "done"
    assert queue_stats(store).flagged_decisions == 1


def test_two_annotators_must_agree(store: Store, annotators: dict[str, str]) -> None:
    scan_id = store.record_scan(make_record(1))
    enqueue_scan(store, scan_id, required_votes=2)
    a = claim_next(store, "alice")
    assert a is not None
    given = str(a.given_label)
    x, y = str((int(given) + 1) % 10), str((int(given) + 2) % 10)
    assert decide(store, a.item_id, "alice", "relabel", label=x).item_state == "pending"
    assert claim_next(store, "alice") is None  # she already voted on it
    b = claim_next(store, "bob")
    assert b is not None and b.item_id == a.item_id
    assert decide(store, b.item_id, "bob", "relabel", label=y).item_state == "pending"
    c = claim_next(store, "carol")
    assert c is not None
    res = decide(store, c.item_id, "carol", "relabel", label=x)
    assert (res.item_state, res.final_label) == ("done", x)
    stats = queue_stats(store)
    assert stats.agreement == 0.0 and stats.agreement_items == 1  # the first two disagreed
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(Decision)) == 3
