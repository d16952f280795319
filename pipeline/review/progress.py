"""Queue progress: items left, decided today, flagged decisions, agreement."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from infgate.errors import InvalidInputError
from infgate.store.models import Annotator, Decision, Finding, QueueItem, utcnow
from infgate.store.store import Store
from sqlalchemy import func, select

__all__ = ["QueueStats", "decided_today", "list_items", "queue_stats"]


@dataclass(frozen=True)
class QueueStats:
    """Progress: items left, decided today, agreement between annotators."""

    total: int
    pending: int
    claimed: int
    done: int
    decided_today: int
    flagged_decisions: int
    agreement: float | None
    agreement_items: int

    @property
    def left(self) -> int:
        """Items not yet resolved."""
        return self.total - self.done


def queue_stats(
    store: Store, *, scan_id: int | None = None, annotator: str | None = None
) -> QueueStats:
    """Items left, decided today (by ``annotator`` when given), and agreement.

    Agreement is the share of items with two or more counted, definite decisions whose
    first two decisions agree.
    """
    now = utcnow()
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    with store.read_session() as s:
        scope = [] if scan_id is None else [QueueItem.scan_id == scan_id]
        by_state = dict(
            s.execute(
                select(QueueItem.state, func.count()).where(*scope).group_by(QueueItem.state)
            ).all()
        )
        expired = s.scalar(
            select(func.count()).where(
                *scope, QueueItem.state == "claimed", QueueItem.lease_expires_at < now
            )
        )
        # an expired lease is back in the queue for everyone, whatever its row still says
        by_state["claimed"] = by_state.get("claimed", 0) - int(expired or 0)
        by_state["pending"] = by_state.get("pending", 0) + int(expired or 0)
        dec = select(func.count()).select_from(Decision).join(QueueItem)
        dec = dec.where(*scope)
        if annotator is not None:
            dec = dec.join(Annotator, Decision.annotator_id == Annotator.id).where(
                Annotator.name == annotator
            )
        decided_today = s.scalar(
            dec.where(Decision.created_at >= today, Decision.counted.is_(True))
        )
        flagged = s.scalar(dec.where(Decision.lease_expired.is_(True)))
        rows = s.execute(
            select(Decision.queue_item_id, Decision.action, Decision.label_after)
            .join(QueueItem)
            .where(*scope, Decision.counted.is_(True), Decision.action != "not_sure")
            .order_by(Decision.queue_item_id, Decision.id)
        ).all()
    firsts: dict[int, list[tuple[str, str | None]]] = {}
    for qid, action, label in rows:
        firsts.setdefault(qid, []).append((action, label))
    pairs = [v[:2] for v in firsts.values() if len(v) >= 2]
    agree = sum(a == b for a, b in pairs)
    total = sum(by_state.values())
    return QueueStats(
        total=total,
        pending=by_state.get("pending", 0),
        claimed=by_state.get("claimed", 0),
        done=by_state.get("done", 0),
        decided_today=int(decided_today or 0),
        flagged_decisions=int(flagged or 0),
        agreement=agree / len(pairs) if pairs else None,
        agreement_items=len(pairs),
    )


def decided_today(store: Store, annotator: str | int) -> int:
    """Counted decisions ``annotator`` (name or id) made since midnight UTC."""
    today = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    who = Annotator.id if isinstance(annotator, int) else Annotator.name
    with store.read_session() as s:
        n = s.scalar(
            select(func.count())
            .select_from(Decision)
            .join(Annotator, Decision.annotator_id == Annotator.id)
            .where(who == annotator, Decision.created_at >= today, Decision.counted.is_(True))
        )
    return int(n or 0)


def list_items(
    store: Store, *, scan_id: int | None = None, state: str | None = None, limit: int = 50
) -> pd.DataFrame:
    """Queue items, highest priority first, with their finding and current lease holder."""
    if state is not None and state not in ("pending", "claimed", "done"):
        raise InvalidInputError(f"state must be pending, claimed or done, got {state!r}")
    stmt = (
        select(
            QueueItem.id.label("item_id"),
            QueueItem.state,
            QueueItem.scan_id,
            Finding.id.label("finding_id"),
            Finding.example_id,
            Finding.score,
            Finding.given_label,
            Finding.suggested_label,
            Finding.suggestion_confidence,
            QueueItem.required_votes,
            Annotator.name.label("claimed_by"),
            QueueItem.lease_expires_at,
            QueueItem.final_action,
            QueueItem.final_label,
        )
        .join(Finding, QueueItem.finding_id == Finding.id)
        .outerjoin(Annotator, QueueItem.claimed_by == Annotator.id)
        .order_by(QueueItem.priority.desc(), QueueItem.id)
        .limit(int(limit))
    )
    if scan_id is not None:
        stmt = stmt.where(QueueItem.scan_id == scan_id)
    if state is not None:
        stmt = stmt.where(QueueItem.state == state)
    with store.read_session() as s:
        result = s.execute(stmt)
        return pd.DataFrame(result.all(), columns=list(result.keys()))
