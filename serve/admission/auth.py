"""API keys and per-key rate limits.

Keys come from the config (`auth.api_keys`) and the environment (`CHORUS_API_KEYS`, comma
separated). A configured key is either the key itself or `sha256:<hex digest>` so configs can hold
hashes instead of secrets. Only digests are kept in memory, compared in constant time. With no key
configured the service is open (the local default, bound to 127.0.0.1, as vLLM does).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import threading
import time
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

HASH_PREFIX = "sha256:"
KEYS_ENV = "CHORUS_API_KEYS"


class AuthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_keys: list[str] = Field(
        default_factory=list, description="Accepted keys: plain, or 'sha256:<hex>' of the key (preferred in files)"
    )
    api_keys_env: str = Field(KEYS_ENV, description="Environment variable with more keys, comma separated")
    require_api_keys: bool = Field(
        False, description="Refuse to start without at least one key (shared deployments)"
    )
    requests_per_minute: int | None = Field(None, ge=1, description="Per-key request budget; None = unlimited")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """Verifies presented keys against configured digests."""

    def __init__(self, config: AuthConfig, environ: dict[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        entries = list(config.api_keys) + [k.strip() for k in environ.get(config.api_keys_env, "").split(",")]
        self._digests = [e[len(HASH_PREFIX) :].lower() if e.startswith(HASH_PREFIX) else digest(e) for e in entries if e]
        if config.require_api_keys and not self._digests:
            raise ValueError(
                f"this deployment requires API keys: set auth.api_keys in the config or {config.api_keys_env}"
            )

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def identify(self, authorization: str | None) -> str | None:
        """The key's id (a digest prefix, safe to log) for a valid `Bearer <key>` header, else None."""
        if not authorization or not authorization.lower().startswith("bearer "):
            return None
        presented = digest(authorization[7:].strip())
        matched = None
        for known in self._digests:  # no early exit: time does not depend on which key matched
            if hmac.compare_digest(presented, known):
                matched = known
        return matched[:12] if matched else None


@dataclass
class _Bucket:
    tokens: float
    updated: float = field(default_factory=time.monotonic)


class RateLimiter:
    """Token bucket per key: `per_minute` requests, refilled continuously."""

    def __init__(self, per_minute: int, clock=time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def acquire(self, key_id: str) -> float:
        """0 when the request may proceed, else the seconds until one token is back (Retry-After)."""
        with self._lock:
            now = self._clock()
            bucket = self._buckets.setdefault(key_id, _Bucket(self.capacity, now))
            bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
