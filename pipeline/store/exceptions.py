"""Errors the store, the queue and the review page raise on purpose."""

from __future__ import annotations

from pipeline.errors import InfgateError

__all__ = ["LeaseExpiredError", "NotFoundError", "SchemaVersionError"]


class SchemaVersionError(InfgateError, RuntimeError):
    """The database's schema revision is not this infgate's (run ``infgate db upgrade``)."""


class NotFoundError(InfgateError, LookupError):
    """A scan, finding, queue item or annotator id that the store does not have."""


class LeaseExpiredError(InfgateError, RuntimeError):
    """A decision arrived for a lease that had expired or passed to someone else.

    The decision is still appended to the audit log (flagged ``lease_expired``) but does not
    count towards the item; ``decision_id`` names the recorded row.
    """

    def __init__(self, message: str, *, decision_id: int) -> None:
        super().__init__(message)
        self.decision_id = decision_id
