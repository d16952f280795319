"""16 workers claim and decide 1,000 items at once: no item claimed twice, no decision lost.

A correctness test (timings belong in benchmarks/bench_queue.py)."""

from __future__ import annotations

import threading
from collections import Counter

from infgate.review.annotators import ensure_annotator
from infgate.review.queue import claim_next, decide, enqueue_scan
from infgate.store import Store
from infgate.store.models import Decision, QueueItem
from sqlalchemy import func, select

from tests.store.fixtures import make_record

N_ITEMS = 1000
N_WORKERS = 16


def test_sixteen_workers_never_share_an_item(store: Store) -> None:
    scan_id = store.record_scan(make_record(N_ITEMS, image=False))
    assert enqueue_scan(store, scan_id) == N_ITEMS
    names = [f"worker{i}" for i in range(N_WORKERS)]
    for name in names:
        ensure_annotator(store, name)
    claimed: list[list[int]] = [[] for _ in names]
    decided: list[list[int]] = [[] for _ in names]
    errors: list[BaseException] = []
    start = threading.Barrier(N_WORKERS)

    def work(i: int) -> None:
        try:
            start.wait()
            while (item := claim_next(store, names[i], lease_seconds=600)) is not None:
                claimed[i].append(item.item_id)
                res = decide(store, item.item_id, names[i], "keep", lease_token=item.lease_token)
                assert res.counted
                decided[i].append(res.decision_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(N_WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[:3]
    all_claims = [c for per in claimed for c in per]
    twice = [item for item, n in Counter(all_claims).items() if n > 1]
    assert twice == []
    assert len(all_claims) == N_ITEMS
    assert sum(len(d) for d in decided) == N_ITEMS
    assert sum(1 for per in claimed if per) > 1  # the work really was shared
    with store.session() as s:
        per_item = s.execute(
            select(Decision.queue_item_id, func.count()).group_by(Decision.queue_item_id)
        ).all()
        done = s.scalar(select(func.count()).where(QueueItem.state == "done"))
        recorded = set(s.scalars(select(Decision.id)))
    assert len(per_item) == N_ITEMS and all(n == 1 for _, n in per_item)
    assert done == N_ITEMS
    assert recorded == {d for per in decided for d in per}
