"""server-side review sessions, token ids, deactivation time, webhook deliveries, scan outputs

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 10:00:00

* ``annotators.token_id`` (unique): the public half of ``<token_id>.<secret>`` login tokens,
  looked up before any scrypt. Tokens issued before this revision (``igt_<n>_<secret>``)
  have no token id and stop signing in: issue a new one (``infgate annotator token NAME``).
* ``annotators.deactivated_at``: when ``active`` was turned off.
* ``ui_sessions``: review-page sessions that logout and revocation delete.
* ``webhook_deliveries``: accepted delivery ids, so a replay is refused after a restart.
* ``scans.n_outputs`` / ``scans.curvature``: the model's output count (labels are checked
  against it) and the fitted curvature's summary.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("annotators") as batch:
        batch.add_column(sa.Column("token_id", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("deactivated_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_annotators_token_id", ["token_id"], unique=True)
    with op.batch_alter_table("scans") as batch:
        batch.add_column(sa.Column("n_outputs", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("curvature", sa.JSON(), nullable=True))
    op.create_table(
        "ui_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_hash", sa.String(length=64), nullable=False),
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["annotator_id"], ["annotators.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("session_hash"),
    )
    op.create_index("ix_ui_sessions_annotator_id", "ui_sessions", ["annotator_id"])
    op.create_index("ix_ui_sessions_expires_at", "ui_sessions", ["expires_at"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("delivery_id", sa.String(length=255), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("delivery_id"),
    )
    op.create_index("ix_webhook_deliveries_received_at", "webhook_deliveries", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_received_at", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index("ix_ui_sessions_expires_at", table_name="ui_sessions")
    op.drop_index("ix_ui_sessions_annotator_id", table_name="ui_sessions")
    op.drop_table("ui_sessions")
    with op.batch_alter_table("scans") as batch:
        batch.drop_column("curvature")
        batch.drop_column("n_outputs")
    with op.batch_alter_table("annotators") as batch:
        batch.drop_index("ix_annotators_token_id")
        batch.drop_column("deactivated_at")
        batch.drop_column("token_id")
