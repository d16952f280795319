"""how each dataset version is read: the resolved column plan

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 07:10:00

* ``dataset_versions.columns``: the scan's resolved
  :class:`~infgate.data.columns.ColumnPlan` (feature columns, decoding, input shape, pad id),
  so ``queue apply`` and the relabel flow decode the file exactly as the scan did. Versions
  recorded before this revision have none and are read with the default column rules.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("dataset_versions") as batch:
        batch.add_column(sa.Column("columns", sa.JSON(), nullable=True))


def downgrade() -> None:
    # a plain ALTER TABLE .. DROP COLUMN (SQLite >= 3.35 has it): a batch copy would drop
    # and re-create dataset_versions, which the scans' foreign keys refuse
    op.drop_column("dataset_versions", "columns")
