"""Where the store lives and how long it keeps things.

One SQLite file under a data dir by default (one replica, nothing to run); a PostgreSQL DSN when
several replicas must see the same responses and conversations. The DSN can come from the
environment (`CHORUS_STORE_DSN`) so a password never sits in a config file.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

DATA_DIR_ENV = "CHORUS_DATA_DIR"
DSN_ENV = "CHORUS_STORE_DSN"
DEFAULT_DATA_DIR = "~/.local/share/chorus"
DB_FILE = "chorus.db"
SQLITE_SCHEME = "sqlite+aiosqlite"
POSTGRES_SCHEME = "postgresql+asyncpg"


class StoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Keep responses and conversations (off: the Responses API is stateless)")
    data_dir: str | None = Field(
        None, description=f"Directory of the SQLite file ({DB_FILE}); None = ${DATA_DIR_ENV} or {DEFAULT_DATA_DIR}"
    )
    dsn: str | None = Field(
        None,
        description="SQLAlchemy URL, e.g. postgresql+asyncpg://user@host:5432/chorus or sqlite+aiosqlite:///path; "
        "None = the dsn_env variable, else the SQLite file under data_dir",
    )
    dsn_env: str = Field(DSN_ENV, description="Environment variable read for the DSN when dsn is None (keeps secrets out of files)")
    require_dsn: bool = Field(
        False,
        description="Refuse to open without a DSN: a deployment of several nodes must not fall back to a "
        "SQLite file per node",
    )
    keep_media: bool = Field(
        True, description="Store raw media (images, audio, documents); off: only the text derived from them is kept"
    )
    retention_days: float | None = Field(
        30, gt=0, description="Responses and conversations (with their items) unchanged this long are purged; None = forever"
    )
    media_retention_days: float | None = Field(7, gt=0, description="Media unused this long is purged; None = forever")
    audit_retention_days: float | None = Field(365, gt=0, description="Audit rows older than this are purged; None = forever")
    purge_interval_s: float = Field(3600, gt=0, description="Seconds between retention purges")
    lease_s: float = Field(
        30, gt=0, description="An in_progress response without a heartbeat this long is swept to incomplete"
    )

    def url(self, environ: dict[str, str] | None = None) -> str:
        """The SQLAlchemy URL: `dsn`, else `$dsn_env`, else the SQLite file under the data dir."""
        environ = os.environ if environ is None else environ
        dsn = self.dsn or environ.get(self.dsn_env)
        if dsn:
            # Plain `postgresql://` / `sqlite://` URLs (what ops tools print) get the async drivers.
            for plain, scheme in (("postgresql://", POSTGRES_SCHEME), ("postgres://", POSTGRES_SCHEME), ("sqlite://", SQLITE_SCHEME)):
                if dsn.startswith(plain):
                    return scheme + dsn[len(plain) - 3 :]
            return dsn
        if self.require_dsn:
            raise ValueError(f"store.require_dsn is set and no DSN is configured: set store.dsn or ${self.dsn_env}")
        return f"{SQLITE_SCHEME}:///{self.sqlite_path(environ)}"

    def sqlite_path(self, environ: dict[str, str] | None = None) -> Path:
        environ = os.environ if environ is None else environ
        data_dir = self.data_dir or environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
        return Path(data_dir).expanduser().resolve() / DB_FILE
