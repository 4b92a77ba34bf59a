"""The durable store behind the Responses and Conversations APIs: SQLite by default, PostgreSQL
for multi-replica deployments, one schema, Alembic migrations run on open."""

from serve.store.config import StoreConfig
from serve.store.queries import media_refs
from serve.store.records import AuditEntry, ConversationRecord, NotFound, Page, ResponseRecord
from serve.store.store import Store

__all__ = [
    "AuditEntry",
    "ConversationRecord",
    "NotFound",
    "Page",
    "ResponseRecord",
    "Store",
    "StoreConfig",
    "media_refs",
]
