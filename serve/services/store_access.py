"""The replica's response store, opened on first use: its maintenance loop, its health, and the
media reads and writes that stored items need (kept media in, media for a prompt or a page out)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from serve.errors import Overloaded
from serve.redact import RedactingFilter
from serve.store import Store

from .items import media_refs, public_form, sha256, stored_form

log = logging.getLogger("ray.serve.chorus.store")
log.addFilter(RedactingFilter())


class StoreAccess:
    """The replica's store, opened on first use; media reads and writes for items."""

    def __init__(self, config: Any) -> None:
        self.config = config  # StoreConfig
        self._store: Store | None = None
        self._lock = asyncio.Lock()
        self._maintenance: asyncio.Task | None = None

    async def get(self) -> Store | None:
        if not self.config.enabled:
            return None
        if self._store is None:
            async with self._lock:
                if self._store is None:
                    try:
                        self._store = await Store.open(self.config)
                    except Exception as err:  # the database is away or misconfigured: our fault, not the client's
                        log.exception("the response store did not open")
                        raise Overloaded(
                            "the response store is unavailable; try again later", code="store_unavailable", retry_after="5"
                        ) from err
                    # Sweeps responses whose replica died mid-answer, purges what retention says.
                    self._maintenance = asyncio.create_task(self._store.run_maintenance())
        return self._store

    async def health(self, timeout_s: float) -> dict[str, Any]:
        """The store's state for /health (opening it if it is not open yet)."""
        if not self.config.enabled:
            return {"status": "not_configured"}
        try:
            store = await asyncio.wait_for(self.get(), timeout_s)
            return {"status": "ok", "backend": store.backend, "keep_media": self.config.keep_media}
        except Exception as err:  # a store that cannot open is reported, not raised
            return {"status": "unavailable", "error": type(err).__name__}

    async def stored(self, owner: str, items: list[dict[str, Any]], read: dict[str, str]) -> list[dict[str, Any]]:
        """`items` in their stored form, their media written first (when media is kept)."""
        kept: list[tuple[bytes, str]] = []

        def keep(data: bytes, mime: str) -> str:
            kept.append((data, mime))
            return sha256(data)

        out = [stored_form(item, read, keep if self.config.keep_media else None) for item in items]
        store = await self.get()
        for data, mime in kept:
            await store.put_media(owner, data, mime)
        return out

    async def media_for(self, owner: str, items: list[dict[str, Any]]) -> dict[str, tuple[bytes, str]]:
        store = await self.get()
        found = {}
        for sha in media_refs(items):
            got = await store.get_media(owner, sha)
            if got is not None:
                found[sha] = got
        return found

    async def page(self, owner: str, page: Any) -> dict[str, Any]:
        media = await self.media_for(owner, page.items)
        return {
            "object": "list",
            "data": [public_form(i, media) for i in page.items],
            "first_id": page.first_id,
            "last_id": page.last_id,
            "has_more": page.has_more,
        }

    async def close(self) -> None:
        if self._maintenance is not None:  # stopped before the engine goes: a query cut mid-way would hang
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
        if self._store is not None:
            await self._store.close()
