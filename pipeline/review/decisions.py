"""Decisions: validated and appended to the audit log inside the caller's transaction.

An item resolves once ``required_votes`` counted decisions agree (same action and label);
``not_sure`` never resolves it. A decision without a valid lease is appended with
``counted=False`` and ``lease_expired=True``: recorded, never dropped, never counted.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Literal, get_args

from infgate.errors import InvalidInputError, NotFoundError
from infgate.store.models import DatasetVersion, Decision, Finding, QueueItem, Scan, utcnow
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

__all__ = [
    "ACTIONS",
    "MAX_ID",
    "Action",
    "DecisionResult",
    "aware",
    "check_id",
    "check_label",
    "class_count",
    "label_index",
    "record_decision",
]

Action = Literal["keep", "relabel", "not_sure", "invalid"]
ACTIONS: tuple[str, ...] = get_args(Action)
#: The largest id the store's INTEGER columns hold on every back-end (PostgreSQL int4).
MAX_ID = 2**31 - 1
_INDEX = re.compile(r"^[0-9]{1,10}$")  # ASCII digits only (str.isdigit accepts "²", "٣")


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


def check_id(value: Any, what: str = "id") -> int:
    """``value`` as a database id: an int (never a bool) in ``[1, MAX_ID]``, else a one-line
    :class:`InvalidInputError` naming it (ids beyond the database's integer range cannot
    exist, and SQLite would overflow on them)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{what} must be an integer, got {value!r}")
    if not 1 <= value <= MAX_ID:
        shown = (
            str(value)
            if len(str(value)) <= 24
            else f"{str(value)[:20]}... ({len(str(value))} digits)"
        )
        raise InvalidInputError(f"{what} must be in [1, {MAX_ID}], got {shown}")
    return value


def class_count(classes: list[str] | None, n_outputs: int | None) -> int | None:
    """How many classes a label may name: the model's output count (one output = a binary
    model, two classes), else the number of class names, else ``None`` (unknown)."""
    if n_outputs is not None:
        return 2 if n_outputs == 1 else int(n_outputs)
    return len(classes) if classes else None


def label_index(label: Any, classes: list[str] | None, n_outputs: int | None = None) -> int:
    """The class index ``label`` names, checked against the model's outputs and the class
    names; a one-line :class:`InvalidInputError` naming the label otherwise.

    With class names, ``label`` must be one of them; without, a class index ``0..C-1``
    (C from ``n_outputs``; any index when neither is known).
    """
    if isinstance(label, bool) or label is None or str(label).strip() == "":
        raise InvalidInputError(
            f"relabel needs a label (the class to relabel the example to), got {label!r}"
        )
    text = str(label)
    count = class_count(classes, n_outputs)
    if classes:
        if text not in classes:
            raise InvalidInputError(f"label {text!r} is not a class of this dataset {classes}")
        index = classes.index(text)
    elif not _INDEX.match(text):
        raise InvalidInputError(f"label {text!r} is not a class index (this dataset names none)")
    else:
        index = int(text)
    if count is not None and index >= count:
        raise InvalidInputError(
            f"label {text!r} is class {index}, but the model has only {count} classes "
            f"(0..{count - 1})"
        )
    return index


def check_label(label: Any, classes: list[str] | None, n_outputs: int | None = None) -> str:
    """``label`` as the class name the store keeps (see :func:`label_index` for the rules)."""
    index = label_index(label, classes, n_outputs)
    return classes[index] if classes else str(index)


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
    check_id(item_id, "queue item id")
    now = utcnow()
    lock = (
        select(QueueItem, Finding.given_label, DatasetVersion.classes, Scan.n_outputs)
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
    item, before, classes, n_outputs = row
    after: str | None = None
    if action == "relabel":
        after = check_label(label, classes, n_outputs)
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
