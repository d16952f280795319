"""SQLAlchemy 2 typed models of the findings store (schema owned by the Alembic migrations)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Annotator",
    "Base",
    "DatasetVersion",
    "Decision",
    "Finding",
    "GateResult",
    "MismatchReportRow",
    "ModelVersion",
    "QueueItem",
    "Scan",
    "UISession",
    "WebhookDelivery",
    "utcnow",
]


def utcnow() -> dt.datetime:
    """Timezone-aware UTC now (stored as UTC on both back-ends)."""
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    """Declarative base; ``type_annotation_map`` keeps JSON and datetimes portable."""

    type_annotation_map = {  # noqa: RUF012
        dict[str, Any]: JSON,
        list[Any]: JSON,
        dt.datetime: DateTime(timezone=True),
    }


class DatasetVersion(Base):
    """A dataset version, identified by its content hash."""

    __tablename__ = "dataset_versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    source_uri: Mapped[str | None] = mapped_column(Text)
    n_rows: Mapped[int] = mapped_column(Integer)
    classes: Mapped[list[Any] | None] = mapped_column(JSON)
    image_shape: Mapped[list[Any] | None] = mapped_column(JSON)
    feature_names: Mapped[list[Any] | None] = mapped_column(JSON)
    #: The resolved column plan (``ColumnPlan.to_dict()``): how to decode this version.
    columns: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_versions.id"))
    note: Mapped[str | None] = mapped_column(Text)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    """A registered model version (MLflow registry name + version, and its run)."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_versions_name_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    version: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Scan(Base):
    """One run of the influence stage over a model version and a dataset version."""

    __tablename__ = "scans"
    __table_args__ = (
        UniqueConstraint(
            "model_version_id", "dataset_version_id", "config_hash", name="uq_scans_identity"
        ),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    dataset_version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"))
    config_hash: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    method: Mapped[str] = mapped_column(String(64))
    damping: Mapped[float] = mapped_column(Float)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    n_runs: Mapped[int] = mapped_column(Integer, default=1)
    # the model's output count (classes it can predict): every label that enters is checked
    # against it; NULL for scans stored before it was recorded (class names are the fallback)
    n_outputs: Mapped[int | None] = mapped_column(Integer)
    curvature: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Finding(Base):
    """One flagged example in a scan; ``active`` is false once a re-run no longer flags it."""

    __tablename__ = "findings"
    __table_args__ = (
        UniqueConstraint("scan_id", "kind", "example_id", name="uq_findings_scan_kind_example"),
        Index("ix_findings_scan_score", "scan_id", "score"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    example_id: Mapped[str] = mapped_column(String(255))
    score: Mapped[float] = mapped_column(Float)
    rank: Mapped[int] = mapped_column(Integer)
    given_label: Mapped[str | None] = mapped_column(String(255))
    predicted_label: Mapped[str | None] = mapped_column(String(255))
    suggested_label: Mapped[str | None] = mapped_column(String(255))
    suggestion_confidence: Mapped[float | None] = mapped_column(Float)
    is_suspect: Mapped[bool] = mapped_column(Boolean, default=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    features: Mapped[list[Any] | None] = mapped_column(JSON)
    explanation: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class MismatchReportRow(Base):
    """The dataset-level train-vs-eval test of one scan."""

    __tablename__ = "mismatch_reports"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), unique=True)
    statistic: Mapped[float | None] = mapped_column(Float)
    p_value: Mapped[float | None] = mapped_column(Float)
    flagged: Mapped[bool] = mapped_column(Boolean)
    alpha: Mapped[float | None] = mapped_column(Float)
    method: Mapped[str | None] = mapped_column(String(64))
    report: Mapped[dict[str, Any]] = mapped_column(JSON)


class GateResult(Base):
    """A Great Expectations verdict for a scan (append-only: every gate check is kept)."""

    __tablename__ = "gate_results"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), index=True)
    verdict: Mapped[str] = mapped_column(String(16))
    reasons: Mapped[list[Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Annotator(Base):
    """A person (or an import source) who decides queue items; credentials stored hashed.

    ``token_id`` is the public half of the login token (``<token_id>.<secret>``): the row is
    found by it before any hash runs. ``active`` false = deactivated (cannot sign in or
    decide; decisions kept).
    """

    __tablename__ = "annotators"
    __table_args__ = (Index("ix_annotators_token_id", "token_id", unique=True),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    token_id: Mapped[str | None] = mapped_column(String(32))
    token_hash: Mapped[str | None] = mapped_column(String(255))
    password_hash: Mapped[str | None] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    deactivated_at: Mapped[dt.datetime | None] = mapped_column()


class UISession(Base):
    """A signed-in review-page session; deleting the row (logout, revoke) ends it.

    ``session_hash`` is HMAC-SHA256(UI secret, cookie value): the cookie itself is never
    stored, and a stolen table signs nobody in.
    """

    __tablename__ = "ui_sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_hash: Mapped[str] = mapped_column(String(64), unique=True)
    annotator_id: Mapped[int] = mapped_column(
        ForeignKey("annotators.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class WebhookDelivery(Base):
    """A webhook delivery id the receiver accepted (replay protection across restarts);
    rows older than twice the allowed timestamp age are pruned."""

    __tablename__ = "webhook_deliveries"
    delivery_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)


class QueueItem(Base):
    """A finding waiting (``pending``), held (``claimed``) or answered (``done``)."""

    __tablename__ = "queue_items"
    __table_args__ = (Index("ix_queue_items_state_priority", "state", "priority"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    finding_id: Mapped[int] = mapped_column(ForeignKey("findings.id"), unique=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id"), index=True)
    priority: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    required_votes: Mapped[int] = mapped_column(Integer, default=1)
    claimed_by: Mapped[int | None] = mapped_column(ForeignKey("annotators.id"))
    lease_token: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column()
    final_action: Mapped[str | None] = mapped_column(String(16))
    final_label: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[dt.datetime | None] = mapped_column()


class Decision(Base):
    """Append-only audit log: one row per answer, never updated or deleted."""

    __tablename__ = "decisions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    queue_item_id: Mapped[int] = mapped_column(ForeignKey("queue_items.id"), index=True)
    finding_id: Mapped[int] = mapped_column(ForeignKey("findings.id"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    action: Mapped[str] = mapped_column(String(16))
    label_before: Mapped[str | None] = mapped_column(String(255))
    label_after: Mapped[str | None] = mapped_column(String(255))
    counted: Mapped[bool] = mapped_column(Boolean)
    lease_expired: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str] = mapped_column(String(32), default="cli")
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
