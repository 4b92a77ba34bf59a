"""The store's tables, one schema for SQLite and PostgreSQL.

Times are epoch seconds (`Double`), as in OpenAI's objects (`created_at`), so no timezone handling
differs between the backends. Items are JSON in OpenAI's Responses item shape; their order is an
explicit integer `position` (never insertion order or time). Every row carries `owner` (the API
key id) in its primary key: an object of another key is not found, by construction.

Media is content-addressed per owner. Which items reference which media is recorded in
`response_item_media` / `conversation_item_media`, which cascade from their item, so deleting an
item drops its references and the store can then drop media nobody references.

`migrations/versions/*.py` must match this file (tests/unit/test_store.py compares them).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Double,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ID_LEN = 128  # OpenAI's ids are ~55 characters ("resp_" + 48 hex)
OWNER_LEN = 64  # an API key id (a digest prefix)
STATUS_LEN = 16
MODEL_LEN = 256
MIME_LEN = 255
SHA256_LEN = 64
KIND_LEN = 8

# Named constraints, so the migration and the models name them alike on both backends.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite makes only an INTEGER PRIMARY KEY an autoincrementing rowid; PostgreSQL wants 64 bits.
AUTO_ID = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Response(Base):
    """A Responses API response; `body` is the Response object as the API returns it."""

    __tablename__ = "responses"
    owner: Mapped[str] = mapped_column(String(OWNER_LEN), primary_key=True)
    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    status: Mapped[str] = mapped_column(String(STATUS_LEN))
    model: Mapped[str] = mapped_column(String(MODEL_LEN))
    created_at: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)  # retention counts from here
    lease_until: Mapped[float | None] = mapped_column(Double)  # in_progress only: the sweep's deadline
    # No foreign keys: a deleted predecessor or conversation just ends the chain / is nulled by code
    # (a composite SET NULL would null `owner` too).
    previous_response_id: Mapped[str | None] = mapped_column(String(ID_LEN))
    conversation_id: Mapped[str | None] = mapped_column(String(ID_LEN))
    body: Mapped[dict] = mapped_column(JSON)

    __table_args__ = (
        Index(None, "updated_at"),
        Index(None, "status", "lease_until"),
        Index(None, "owner", "conversation_id"),
    )


class ResponseItem(Base):
    """An input (`kind` "input") or output item of a response; inputs first, then outputs."""

    __tablename__ = "response_items"
    owner: Mapped[str] = mapped_column(String(OWNER_LEN), primary_key=True)
    response_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(KIND_LEN))
    item_id: Mapped[str] = mapped_column(String(ID_LEN))
    data: Mapped[dict] = mapped_column(JSON)

    __table_args__ = (
        ForeignKeyConstraint(["owner", "response_id"], ["responses.owner", "responses.id"], ondelete="CASCADE"),
        UniqueConstraint("owner", "response_id", "item_id"),
    )


class Conversation(Base):
    """A Conversations API conversation; `next_position` allocates its items' positions."""

    __tablename__ = "conversations"
    owner: Mapped[str] = mapped_column(String(OWNER_LEN), primary_key=True)
    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    created_at: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)
    metadata_: Mapped[dict] = mapped_column("metadata", JSON)
    next_position: Mapped[int] = mapped_column(Integer)

    # the conversations list (GET /v1/conversations): an owner's, by creation time then id
    __table_args__ = (Index(None, "updated_at"), Index(None, "owner", "created_at", "id"))


class ConversationItem(Base):
    __tablename__ = "conversation_items"
    owner: Mapped[str] = mapped_column(String(OWNER_LEN), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[str] = mapped_column(String(ID_LEN))
    data: Mapped[dict] = mapped_column(JSON)

    __table_args__ = (
        ForeignKeyConstraint(
            ["owner", "conversation_id"], ["conversations.owner", "conversations.id"], ondelete="CASCADE"
        ),
        UniqueConstraint("owner", "conversation_id", "item_id"),
    )


class Media(Base):
    """Raw media bytes, addressed by (owner, sha256 of the bytes)."""

    __tablename__ = "media"
    owner: Mapped[str] = mapped_column(String(OWNER_LEN), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(SHA256_LEN), primary_key=True)
    mime: Mapped[str] = mapped_column(String(MIME_LEN))
    size: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Double)
    last_used: Mapped[float] = mapped_column(Double)

    __table_args__ = (Index(None, "last_used"),)


class ResponseItemMedia(Base):
    """A response item references a media row. No foreign key to `media`: retention may drop media
    that items still name (the item keeps its derived text)."""

    __tablename__ = "response_item_media"
    owner: Mapped[str] = mapped_column(String(OWNER_LEN), primary_key=True)
    response_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(SHA256_LEN), primary_key=True)

    __table_args__ = (
        ForeignKeyConstraint(
            ["owner", "response_id", "position"],
            ["response_items.owner", "response_items.response_id", "response_items.position"],
            ondelete="CASCADE",
        ),
        Index(None, "owner", "sha256"),
    )


class ConversationItemMedia(Base):
    """A conversation item references a media row (see ResponseItemMedia)."""

    __tablename__ = "conversation_item_media"
    owner: Mapped[str] = mapped_column(String(OWNER_LEN), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(SHA256_LEN), primary_key=True)

    __table_args__ = (
        ForeignKeyConstraint(
            ["owner", "conversation_id", "position"],
            ["conversation_items.owner", "conversation_items.conversation_id", "conversation_items.position"],
            ondelete="CASCADE",
        ),
        Index(None, "owner", "sha256"),
    )


class AuditRow(Base):
    """One request's bookkeeping: who, what route, how it ended, how long. Never content."""

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(AUTO_ID, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Double)
    key_id: Mapped[str] = mapped_column(String(OWNER_LEN))
    route: Mapped[str] = mapped_column(String(MODEL_LEN))
    method: Mapped[str] = mapped_column(String(STATUS_LEN))
    status: Mapped[int] = mapped_column(Integer)
    request_id: Mapped[str] = mapped_column(String(ID_LEN))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column(Double)
    flags: Mapped[list] = mapped_column(JSON)
    response_id: Mapped[str | None] = mapped_column(String(ID_LEN))

    __table_args__ = (Index(None, "at"), Index(None, "key_id", "at"))
