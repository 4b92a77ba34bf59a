"""The initial schema: responses, conversations, their items, media and its references, audit.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.String(128)
OWNER = sa.String(64)
SHA256 = sa.String(64)
AUTO_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "responses",
        sa.Column("owner", OWNER, nullable=False),
        sa.Column("id", ID, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.Column("lease_until", sa.Double(), nullable=True),
        sa.Column("previous_response_id", ID, nullable=True),
        sa.Column("conversation_id", ID, nullable=True),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("owner", "id", name="pk_responses"),
    )
    op.create_index("ix_responses_updated_at", "responses", ["updated_at"])
    op.create_index("ix_responses_status_lease_until", "responses", ["status", "lease_until"])
    op.create_index("ix_responses_owner_conversation_id", "responses", ["owner", "conversation_id"])

    op.create_table(
        "response_items",
        sa.Column("owner", OWNER, nullable=False),
        sa.Column("response_id", ID, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("item_id", ID, nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("owner", "response_id", "position", name="pk_response_items"),
        sa.ForeignKeyConstraint(
            ["owner", "response_id"],
            ["responses.owner", "responses.id"],
            name="fk_response_items_responses",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("owner", "response_id", "item_id", name="uq_response_items_owner_response_id_item_id"),
    )

    op.create_table(
        "conversations",
        sa.Column("owner", OWNER, nullable=False),
        sa.Column("id", ID, nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("next_position", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("owner", "id", name="pk_conversations"),
    )
    op.create_index("ix_conversations_updated_at", "conversations", ["updated_at"])

    op.create_table(
        "conversation_items",
        sa.Column("owner", OWNER, nullable=False),
        sa.Column("conversation_id", ID, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("item_id", ID, nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("owner", "conversation_id", "position", name="pk_conversation_items"),
        sa.ForeignKeyConstraint(
            ["owner", "conversation_id"],
            ["conversations.owner", "conversations.id"],
            name="fk_conversation_items_conversations",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "owner", "conversation_id", "item_id", name="uq_conversation_items_owner_conversation_id_item_id"
        ),
    )

    op.create_table(
        "media",
        sa.Column("owner", OWNER, nullable=False),
        sa.Column("sha256", SHA256, nullable=False),
        sa.Column("mime", sa.String(255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("last_used", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("owner", "sha256", name="pk_media"),
    )
    op.create_index("ix_media_last_used", "media", ["last_used"])

    op.create_table(
        "response_item_media",
        sa.Column("owner", OWNER, nullable=False),
        sa.Column("response_id", ID, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("sha256", SHA256, nullable=False),
        sa.PrimaryKeyConstraint("owner", "response_id", "position", "sha256", name="pk_response_item_media"),
        sa.ForeignKeyConstraint(
            ["owner", "response_id", "position"],
            ["response_items.owner", "response_items.response_id", "response_items.position"],
            name="fk_response_item_media_response_items",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_response_item_media_owner_sha256", "response_item_media", ["owner", "sha256"])

    op.create_table(
        "conversation_item_media",
        sa.Column("owner", OWNER, nullable=False),
        sa.Column("conversation_id", ID, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("sha256", SHA256, nullable=False),
        sa.PrimaryKeyConstraint(
            "owner", "conversation_id", "position", "sha256", name="pk_conversation_item_media"
        ),
        sa.ForeignKeyConstraint(
            ["owner", "conversation_id", "position"],
            ["conversation_items.owner", "conversation_items.conversation_id", "conversation_items.position"],
            name="fk_conversation_item_media_conversation_items",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_conversation_item_media_owner_sha256", "conversation_item_media", ["owner", "sha256"])

    op.create_table(
        "audit",
        sa.Column("id", AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("key_id", OWNER, nullable=False),
        sa.Column("route", sa.String(256), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("request_id", ID, nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Double(), nullable=True),
        sa.Column("flags", sa.JSON(), nullable=False),
        sa.Column("response_id", ID, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit"),
    )
    op.create_index("ix_audit_at", "audit", ["at"])
    op.create_index("ix_audit_key_id_at", "audit", ["key_id", "at"])


def downgrade() -> None:
    for index, table in (
        ("ix_audit_key_id_at", "audit"),
        ("ix_audit_at", "audit"),
        ("ix_conversation_item_media_owner_sha256", "conversation_item_media"),
        ("ix_response_item_media_owner_sha256", "response_item_media"),
        ("ix_media_last_used", "media"),
        ("ix_conversations_updated_at", "conversations"),
        ("ix_responses_owner_conversation_id", "responses"),
        ("ix_responses_status_lease_until", "responses"),
        ("ix_responses_updated_at", "responses"),
    ):
        op.drop_index(index, table_name=table)
    for table in (
        "audit",
        "conversation_item_media",
        "response_item_media",
        "media",
        "conversation_items",
        "conversations",
        "response_items",
        "responses",
    ):
        op.drop_table(table)
