"""The findings store: scans, findings, mismatch reports, gate results, the relabeling queue
and its append-only decisions, in SQLite (default) or PostgreSQL (``INFGATE_DB_URL``)."""

from infgate.errors import LeaseExpiredError, NotFoundError, SchemaVersionError
from infgate.store.records import ScanInfo, ScanRecord, config_hash
from infgate.store.store import Store

__all__ = [
    "LeaseExpiredError",
    "NotFoundError",
    "ScanInfo",
    "ScanRecord",
    "SchemaVersionError",
    "Store",
    "config_hash",
]
