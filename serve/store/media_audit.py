"""The store's media (content-addressed per owner) and its audit rows: methods of `Store`, kept
apart from the responses and conversations they serve."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from dataclasses import asdict

from sqlalchemy import insert, select, update

from serve.redact import redact
from serve.store import retention
from serve.store.queries import AUDIT, MEDIA
from serve.store.records import AuditEntry

log = logging.getLogger("serve.store.store")  # the maintenance loop's lines, as before the split

OUR_RESPONSE_ID = re.compile(r"resp_[0-9a-f]{32}")


class MediaAuditRetention:
    """Mixed into `Store` (which provides config, _clock, _write, _read, _upsert, sweep_stale)."""

    # ---- media -----------------------------------------------------------------------------

    async def put_media(self, owner: str, data: bytes, mime: str) -> str:
        """Stores `data` once per owner (content-addressed; the first MIME type stays); returns
        its sha256 hex, which items name as `{"media_sha256": ...}`."""
        if not self.config.keep_media:
            raise ValueError("store.keep_media is off: raw media is not stored, only the text derived from it")
        sha = hashlib.sha256(data).hexdigest()
        now = self._clock()
        async with self._write() as conn:
            seen = await conn.execute(
                update(MEDIA).where(MEDIA.c.owner == owner, MEDIA.c.sha256 == sha).values(last_used=now)
            )
            if seen.rowcount == 0:  # new: only now do the bytes travel
                await conn.execute(
                    self._upsert(MEDIA)
                    .values(owner=owner, sha256=sha, mime=mime, size=len(data), data=data, created_at=now, last_used=now)
                    .on_conflict_do_update(index_elements=["owner", "sha256"], set_={"last_used": now})
                )
        return sha

    async def get_media(self, owner: str, sha256: str) -> tuple[bytes, str] | None:
        """The bytes and MIME type; refreshes last_used (media retention counts from the last use)."""
        async with self._write() as conn:
            row = (
                await conn.execute(
                    update(MEDIA)
                    .where(MEDIA.c.owner == owner, MEDIA.c.sha256 == sha256)
                    .values(last_used=self._clock())
                    .returning(MEDIA.c.data, MEDIA.c.mime)
                )
            ).first()
        return None if row is None else (bytes(row.data), row.mime)

    # ---- audit -----------------------------------------------------------------------------

    async def audit(self, entry: AuditEntry) -> None:
        """One audit row; every string redacted (PII never lands here, even in a route or an id)
        and cut to its column's width."""
        row = asdict(entry)
        for name, value in row.items():
            if isinstance(value, str) and not (name == "response_id" and OUR_RESPONSE_ID.fullmatch(value)):
                # our own response ids are kept whole: their hex digits can look like a card number
                # to the redactor (a 13-digit run passing Luhn), which made the row unfindable
                row[name] = redact(value)[: AUDIT.c[name].type.length]
        row["flags"] = [redact(flag) for flag in entry.flags]
        async with self._write() as conn:
            await conn.execute(insert(AUDIT).values(**row))

    async def audit_rows(
        self, *, key_id: str | None = None, since: float | None = None, limit: int = 1000
    ) -> list[AuditEntry]:
        """Oldest first; optionally one key's, from `since` on."""
        query = select(AUDIT).order_by(AUDIT.c.at, AUDIT.c.id).limit(limit)
        if key_id is not None:
            query = query.where(AUDIT.c.key_id == key_id)
        if since is not None:
            query = query.where(AUDIT.c.at >= since)
        async with self._read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [AuditEntry(**{k: v for k, v in row.items() if k != "id"}) for row in rows]

    # ---- retention -------------------------------------------------------------------------

    async def purge(self, now: float | None = None) -> dict[str, int]:
        """Deletes what the retention settings let go of (serve/store/retention.py); the rows
        deleted per table."""
        return await retention.purge(self._write, self.config, self._clock() if now is None else now)

    async def run_maintenance(self) -> None:
        """Until cancelled: sweep stale responses every lease_s, purge every purge_interval_s.
        Every replica may run it (a sweep skips rows another holds; purges are idempotent)."""
        next_purge = time.monotonic()
        while True:
            try:
                await self.sweep_stale()
                if time.monotonic() >= next_purge:
                    next_purge = time.monotonic() + self.config.purge_interval_s
                    counts = await self.purge()
                    if any(counts.values()):
                        log.info("store purge: %s", counts)
            except Exception:  # a failed round (the database away) must not end maintenance
                log.exception("store maintenance failed; retrying")
            await asyncio.sleep(self.config.lease_s)
