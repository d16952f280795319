"""Accepted webhook deliveries, kept in SQL so a replay is refused across receiver restarts
and replicas sharing the store."""

from __future__ import annotations

import datetime as dt

from infgate.errors import InvalidInputError
from infgate.store.models import WebhookDelivery, utcnow
from infgate.store.store import Store
from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

__all__ = ["MAX_DELIVERY_ID", "record_delivery"]

MAX_DELIVERY_ID = 255


def record_delivery(store: Store, delivery_id: str, *, keep_seconds: int) -> bool:
    """Record ``delivery_id``; False when it was already recorded (a replay).

    Ids older than ``keep_seconds`` are pruned first (set it to at least twice the allowed
    timestamp age: an older delivery fails the timestamp check anyway). One statement, so
    two receivers that get the same delivery at once record it once.

    Raises:
        InvalidInputError: an empty id, one longer than 255 characters, or a bad window.
    """
    if not isinstance(delivery_id, str) or not 0 < len(delivery_id) <= MAX_DELIVERY_ID:
        raise InvalidInputError(
            f"a delivery id must be 1-{MAX_DELIVERY_ID} characters, got {len(str(delivery_id))}"
        )
    if isinstance(keep_seconds, bool) or not isinstance(keep_seconds, int) or keep_seconds < 1:
        raise InvalidInputError(f"keep_seconds must be an int >= 1, got {keep_seconds!r}")
    now = utcnow()
    with store.session() as s:
        s.execute(
            delete(WebhookDelivery).where(
                WebhookDelivery.received_at < now - dt.timedelta(seconds=keep_seconds)
            )
        )
        insert = pg_insert if store.dialect == "postgresql" else sqlite_insert
        stmt = insert(WebhookDelivery).values(delivery_id=delivery_id, received_at=now)
        inserted = s.execute(stmt.on_conflict_do_nothing().returning(WebhookDelivery.delivery_id))
        return inserted.scalar() is not None
