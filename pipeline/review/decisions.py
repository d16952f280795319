"""Decisions: validated and appended to the audit log inside the caller's transaction.

An item resolves once ``required_votes`` counted decisions agree (same action and label);
``not_sure`` never resolves it. A decision without a valid lease is appended with
``counted=False`` and ``lease_expired=True``: recorded, never dropped, never counted.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal, get_args

from infgate.errors import InvalidInputError, NotFoundError
from infgate.store.models import DatasetVersion, Decision, Finding, QueueItem, Scan, utcnow
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

__all__ = ["ACTIONS", "Action", "DecisionResult", "aware", "check_label", "record_decision"]

Action = Literal["keep", "relabel", "not_sure", "invalid"]
ACTIONS: tuple[str, ...] = get_args(Action)


@dataclass(frozen=True)
class DecisionResult:
    """What :func:`decide` wrote: the decision row and the item's state afterwards."""

    decision_id: int
    item_id: int
    action: str
    label_before: str | None
    label_after: str | None
    counted: bool
    item_state: str
    final_label: str | None


def aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def check_label(label: str | None, classes: list[str] | None) -> str:
    """``label`` if it names a class of the dataset; a clear error naming it otherwise."""
    if label is None or str(label).strip() == "":
        raise InvalidInputError("relabel needs a label (the class to relabel the example to)")
    label = str(label)
    if classes:
        if label not in classes:
            raise InvalidInputError(f"label {label!r} is not a class of this dataset {classes}")
    elif not label.isdigit():
        raise InvalidInputError(f"label {label!r} is not a class index (this dataset names none)")
    return label


def record_decision(
    s: Session,
    item_id: int,
    me: int,
    action: str,
    *,
    label: str | None,
    lease_token: str | None,
    require_lease: bool,
    source: str,
    note: str | None,
) -> DecisionResult:
    """Validate and append one decision inside the caller's transaction (see :func:`decide`)."""
    if action not in ACTIONS:
        raise InvalidInputError(f"action must be one of {ACTIONS}, got {action!r}")
    now = utcnow()
    lock = (
        select(QueueItem, Finding.given_label, DatasetVersion.classes)
        .join(Finding, QueueItem.finding_id == Finding.id)
        .join(Scan, QueueItem.scan_id == Scan.id)
        .join(DatasetVersion, Scan.dataset_version_id == DatasetVersion.id)
        .where(QueueItem.id == item_id)
    )
    if s.get_bind().dialect.name == "postgresql":
        lock = lock.with_for_update(of=QueueItem)
    row = s.execute(lock).one_or_none()
    if row is None:
        raise NotFoundError(f"no queue item with id {item_id}")
    item, before, classes = row
    after: str | None = None
    if action == "relabel":
        after = check_label(label, classes)
        if after == before:
            action = "keep"
    elif label is not None and action != "keep":
        raise InvalidInputError(f"a label only goes with relabel, not with {action!r}")
    if action == "keep":
        after = before
    if require_lease:
        lease_ok = (
            item.state == "claimed"
            and item.claimed_by == me
            and (aware(item.lease_expires_at) or now) >= now
            and (lease_token is None or lease_token == item.lease_token)
        )
    else:
        voted = s.scalar(
            select(func.count()).where(
                Decision.queue_item_id == item.id,
                Decision.annotator_id == me,
                Decision.counted.is_(True),
            )
        )
        lease_ok = item.state != "done" and not voted
    decision_id = s.scalar(
        insert(Decision)
        .values(
            queue_item_id=item.id,
            finding_id=item.finding_id,
            annotator_id=me,
            action=action,
            label_before=before,
            label_after=after,
            counted=lease_ok,
            lease_expired=require_lease and not lease_ok,
            source=source,
            note=note,
            created_at=now,
        )
        .returning(Decision.id)
    )
    assert decision_id is not None
    if lease_ok:
        _resolve(s, item, action, after, now)
    return DecisionResult(
        decision_id, item.id, action, before, after, lease_ok, item.state, item.final_label
    )


def _resolve(s: Session, item: QueueItem, action: str, label: str | None, now: dt.datetime) -> None:
    """Release the lease; mark the item done once ``required_votes`` decisions agree."""
    item.claimed_by = None
    item.lease_token = None
    item.lease_expires_at = None
    item.state = "pending"
    if action == "not_sure":
        return
    if item.required_votes > 1:
        agreeing = s.scalar(
            select(func.count()).where(
                Decision.queue_item_id == item.id,
                Decision.counted.is_(True),
                Decision.action == action,
                Decision.label_after.is_(None) if label is None else Decision.label_after == label,
            )
        )
        if int(agreeing or 0) < item.required_votes:
            return
    item.state = "done"
    item.final_action = action
    item.final_label = label
    item.decided_at = now
