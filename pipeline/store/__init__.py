"""The findings store: scans, findings, mismatch reports, gate results, the relabeling queue
and its append-only decisions, in SQLite (default) or PostgreSQL (``INFGATE_DB_URL``)."""

from pipeline.store.exceptions import LeaseExpiredError, NotFoundError, SchemaVersionError
from pipeline.store.records import ScanInfo, ScanRecord, config_hash
from pipeline.store.store import Store

__all__ = [
    "LeaseExpiredError",
    "NotFoundError",
    "ScanInfo",
    "ScanRecord",
    "SchemaVersionError",
    "Store",
    "config_hash",
]
