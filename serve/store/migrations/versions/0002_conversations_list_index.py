"""An index for the conversations list (GET /v1/conversations): an owner's conversations by
creation time, then id, read a page at a time without sorting them all.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_conversations_owner_created_at_id", "conversations", ["owner", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_conversations_owner_created_at_id", table_name="conversations")
