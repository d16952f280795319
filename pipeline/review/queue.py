"""The relabeling queue: findings become queue items that annotators claim under a lease
and answer with decisions (an append-only audit log).

Claiming is safe under concurrency: PostgreSQL picks the next item with
``SELECT ... FOR UPDATE SKIP LOCKED``; SQLite runs one atomic conditional ``UPDATE ...
WHERE id = (next eligible) AND <still eligible> RETURNING id`` inside a ``BEGIN IMMEDIATE``
transaction. An expired lease makes its item claimable again. A decision that arrives
under an expired lease is still written (flagged ``lease_expired``), never dropped, but it
does not count towards the item.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from infgate.errors import InvalidInputError, LeaseExpiredError, NotFoundError
from infgate.review.corrected import (
    AppliedVersion,
    ScannedDataset,
    apply_decisions,
    scanned_dataset,
)
from infgate.review.decisions import (
    ACTIONS,
    Action,
    DecisionResult,
    aware,
    check_id,
    record_decision,
)
from infgate.review.progress import QueueStats, decided_today, list_items, queue_stats
from infgate.settings import check_lease_seconds
from infgate.store import Store
from infgate.store.models import (
    Annotator,
    DatasetVersion,
    Decision,
    Finding,
    QueueItem,
    Scan,
    utcnow,
)
from sqlalchemy import and_, exists, func, insert, or_, select, update
from sqlalchemy.orm import Session

__all__ = [
    "ACTIONS",
    "Action",
    "AppliedVersion",
    "ClaimedItem",
    "DecisionResult",
    "QueueStats",
    "ScannedDataset",
    "apply_decisions",
    "claim_next",
    "decide",
    "decided_today",
    "enqueue_scan",
    "get_item",
    "list_items",
    "queue_stats",
    "reference_examples",
    "scanned_dataset",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClaimedItem:
    """A queue item with everything needed to show its example to a person."""

    item_id: int
    finding_id: int
    scan_id: int
    example_id: str
    score: float
    rank: int
    given_label: str | None
    predicted_label: str | None
    suggested_label: str | None
    suggestion_confidence: float | None
    features: list[float] | None
    explanation: dict[str, Any] | None
    classes: list[str] | None
    image_shape: tuple[int, int] | None
    feature_names: list[str] | None
    state: str
    required_votes: int
    lease_token: str | None
    lease_expires_at: dt.datetime | None
    n_outputs: int | None = None
    self_influence: float | None = None
    error_probability: float | None = None
    #: the example is a token-id sequence (the scan's column plan says int64 arrays)
    tokens: bool = False
    #: the id those sequences were padded with (not shown to people), if any
    pad_token_id: int | None = None
    #: how many model inputs ``features`` holds one after another (the first is the tokens)
    n_inputs: int = 1

    def token_ids(self) -> list[int]:
        """A token example's ids in order, padding and any further model inputs (an
        attention mask) left out."""
        values = [int(v) for v in (self.features or [])]
        first = values[: len(values) // max(self.n_inputs, 1)]
        return [t for t in first if t != self.pad_token_id]


def _annotator_id(s: Session, annotator: str | int) -> int:
    if isinstance(annotator, int):
        check_id(annotator, "annotator id")
    col = Annotator.id if isinstance(annotator, int) else Annotator.name
    found = s.scalar(select(Annotator.id).where(col == annotator, Annotator.active.is_(True)))
    if found is None:
        raise NotFoundError(
            f"no active annotator {annotator!r} (create one: infgate annotator add)"
        )
    return int(found)


def enqueue_scan(
    store: Store,
    scan_id: int,
    *,
    per_class_cap: int | None = None,
    required_votes: int = 1,
    min_score: float | None = None,
    kind: str = "label_error",
    suspects_only: bool = True,
) -> int:
    """Turn a scan's findings into queue items, most suspicious first.

    Args:
        store: the store.
        scan_id: scan whose findings to enqueue (already-queued findings are skipped).
        per_class_cap: at most this many items per given label, so one class cannot flood
            the queue; ``None`` = no cap.
        required_votes: agreeing annotators needed to resolve an item (1 or 2).
        min_score: enqueue only findings scoring at least this (higher = more suspicious).
        kind: finding kind to enqueue.
        suspects_only: only findings the detector marked ``is_suspect``.

    Returns:
        Number of items added.
    """
    if per_class_cap is not None and per_class_cap < 1:
        raise InvalidInputError(f"per_class_cap must be None or >= 1, got {per_class_cap}")
    if required_votes not in (1, 2):
        raise InvalidInputError(f"required_votes must be 1 or 2, got {required_votes}")
    with store.session() as s:
        if s.get(Scan, scan_id) is None:
            raise NotFoundError(f"no scan with id {scan_id}")
        stmt = select(Finding.id, Finding.given_label, Finding.score).where(
            Finding.scan_id == scan_id, Finding.kind == kind, Finding.active.is_(True)
        )
        if suspects_only:
            stmt = stmt.where(Finding.is_suspect.is_(True))
        if min_score is not None:
            stmt = stmt.where(Finding.score >= float(min_score))
        queued = select(QueueItem.finding_id).where(QueueItem.scan_id == scan_id)
        counts: dict[str | None, int] = dict(
            s.execute(
                select(Finding.given_label, func.count())
                .join(QueueItem, QueueItem.finding_id == Finding.id)
                .where(QueueItem.scan_id == scan_id)
                .group_by(Finding.given_label)
            ).all()
        )
        rows = []
        for fid, label, score in s.execute(
            stmt.where(Finding.id.not_in(queued)).order_by(Finding.score.desc(), Finding.id)
        ):
            if per_class_cap is not None and counts.get(label, 0) >= per_class_cap:
                continue
            counts[label] = counts.get(label, 0) + 1
            rows.append(
                {
                    "finding_id": fid,
                    "scan_id": scan_id,
                    "priority": score,
                    "required_votes": required_votes,
                }
            )
        if rows:  # one executemany, not a unit of work per item (same transaction)
            s.execute(insert(QueueItem), rows)
    log.info("enqueued %d findings of scan %d", len(rows), scan_id)
    return len(rows)


def _eligible(now: dt.datetime, annotator_id: int) -> Any:
    already = exists().where(
        Decision.queue_item_id == QueueItem.id,
        Decision.annotator_id == annotator_id,
        Decision.counted.is_(True),
    )
    return and_(
        or_(
            QueueItem.state == "pending",
            and_(QueueItem.state == "claimed", QueueItem.lease_expires_at < now),
        ),
        ~already,
    )


def claim_next(
    store: Store, annotator: str | int, *, lease_seconds: int = 300
) -> ClaimedItem | None:
    """Lease the highest-priority item to ``annotator`` (their current lease, if they hold one).

    Returns:
        The claimed item, or ``None`` when nothing is left for this annotator.
    """
    check_lease_seconds(lease_seconds)
    now = utcnow()
    expires = now + dt.timedelta(seconds=lease_seconds)
    token = secrets.token_hex(16)
    with store.session() as s:
        me = _annotator_id(s, annotator)
        held = s.scalar(
            select(QueueItem.id)
            .where(
                QueueItem.state == "claimed",
                QueueItem.claimed_by == me,
                QueueItem.lease_expires_at >= now,
            )
            .order_by(QueueItem.priority.desc(), QueueItem.id)
            .limit(1)
        )
        if held is not None:
            return _load(s, held)
        values = {
            "state": "claimed",
            "claimed_by": me,
            "lease_token": token,
            "lease_expires_at": expires,
        }
        nxt = (
            select(QueueItem.id)
            .where(_eligible(now, me))
            .order_by(QueueItem.priority.desc(), QueueItem.id)
            .limit(1)
        )
        if store.dialect == "postgresql":
            item_id = s.scalar(nxt.with_for_update(skip_locked=True))
            if item_id is None:
                return None
            s.execute(update(QueueItem).where(QueueItem.id == item_id).values(**values))
        else:
            item_id = s.scalar(
                update(QueueItem)
                .where(QueueItem.id == nxt.scalar_subquery(), _eligible(now, me))
                .values(**values)
                .returning(QueueItem.id)
            )
            if item_id is None:
                return None
        return _load(s, item_id)


def get_item(store: Store, item_id: int) -> ClaimedItem:
    """Queue item ``item_id`` with its example (raises :class:`NotFoundError`)."""
    check_id(item_id, "queue item id")
    with store.read_session() as s:
        return _load(s, item_id)


def _load(s: Session, item_id: int) -> ClaimedItem:
    row = s.execute(
        select(QueueItem, Finding, DatasetVersion, Scan.n_outputs)
        .join(Finding, QueueItem.finding_id == Finding.id)
        .join(Scan, QueueItem.scan_id == Scan.id)
        .join(DatasetVersion, Scan.dataset_version_id == DatasetVersion.id)
        .where(QueueItem.id == item_id)
    ).one_or_none()
    if row is None:
        raise NotFoundError(f"no queue item with id {item_id}")
    item, finding, dv, n_outputs = row
    plan = dv.columns or {}
    pad = plan.get("pad_token_id")
    return ClaimedItem(
        item_id=item.id,
        finding_id=finding.id,
        scan_id=item.scan_id,
        example_id=finding.example_id,
        score=finding.score,
        rank=finding.rank,
        given_label=finding.given_label,
        predicted_label=finding.predicted_label,
        suggested_label=finding.suggested_label,
        suggestion_confidence=finding.suggestion_confidence,
        features=finding.features,
        explanation=finding.explanation,
        classes=dv.classes,
        image_shape=(int(dv.image_shape[0]), int(dv.image_shape[1])) if dv.image_shape else None,
        feature_names=dv.feature_names,
        state=item.state,
        required_votes=item.required_votes,
        lease_token=item.lease_token,
        lease_expires_at=aware(item.lease_expires_at),
        n_outputs=n_outputs,
        self_influence=_extra_float(finding.extra, "self_influence"),
        error_probability=_extra_float(finding.extra, "error_probability"),
        tokens=bool(plan) and plan.get("kind") == "array" and plan.get("dtype") == "int64",
        pad_token_id=pad if isinstance(pad, int) and not isinstance(pad, bool) else None,
        n_inputs=max(1, int(plan.get("n_inputs") or 1)),
    )


def _extra_float(extra: dict[str, Any] | None, key: str) -> float | None:
    value = (extra or {}).get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def reference_examples(
    store: Store, scan_id: int, example_ids: list[str], *, limit: int = 20
) -> dict[str, tuple[list[float], str | None]]:
    """``example_id -> (features, given label)`` of up to ``limit`` of the scan's stored
    examples (the training examples an explanation cites; ones without features are left
    out)."""
    check_id(scan_id, "scan id")
    wanted = [str(e) for e in example_ids][: max(0, int(limit))]
    if not wanted:
        return {}
    with store.read_session() as s:
        rows = s.execute(
            select(Finding.example_id, Finding.features, Finding.given_label).where(
                Finding.scan_id == scan_id, Finding.example_id.in_(wanted)
            )
        ).all()
    return {ex: (feats, label) for ex, feats, label in rows if feats is not None}


def decide(
    store: Store,
    item_id: int,
    annotator: str | int,
    action: Action,
    *,
    label: str | None = None,
    lease_token: str | None = None,
    require_lease: bool = True,
    source: str = "cli",
    note: str | None = None,
) -> DecisionResult:
    """Append a decision on queue item ``item_id``.

    Args:
        store: the store.
        item_id: the queue item.
        annotator: annotator name or id.
        action: ``keep`` the given label, ``relabel`` to ``label``, ``not_sure``, or
            ``invalid`` (drop the example from the corrected dataset).
        label: target class for ``relabel``.
        lease_token: the token from :func:`claim_next`; ``None`` accepts the annotator's
            current lease on the item.
        require_lease: ``False`` for imports (Label Studio), which hold no lease.
        source: where the decision came from (``cli``, ``ui``, ``labelstudio``).
        note: free text kept with the decision.

    Returns:
        The recorded decision and the item's state after it.

    Raises:
        InvalidInputError: unknown action, missing or unknown label (nothing written).
        NotFoundError: unknown item or annotator (nothing written).
        LeaseExpiredError: the lease had expired or passed on; the decision IS recorded,
            flagged, and does not count (``err.decision_id`` names it).
    """
    if action not in ACTIONS:
        raise InvalidInputError(f"action must be one of {ACTIONS}, got {action!r}")
    check_id(item_id, "queue item id")
    with store.session() as s:
        me = _annotator_id(s, annotator)
        result = record_decision(
            s,
            item_id,
            me,
            action,
            label=label,
            lease_token=lease_token,
            require_lease=require_lease,
            source=source,
            note=note,
        )
    lease_ok = result.counted
    if not lease_ok and require_lease:
        raise LeaseExpiredError(
            f"your lease on queue item {item_id} had expired or passed to someone else; the "
            f"decision was recorded (decision #{result.decision_id}, flagged lease_expired) but "
            f"does not count. Claim the next item with `infgate queue next`.",
            decision_id=result.decision_id,
        )
    return result
