"""Who may send a request, and how many at once: API keys, per-key rates, in-flight slots."""

from __future__ import annotations

from serve.errors import RateLimited, Unauthenticated

from .auth import AuthConfig, KeyStore, RateLimiter, retry_after_header
from .limits import OVERLOAD_RETRY_AFTER_S, InFlight, Slot

ANONYMOUS = "-"


class Gate:
    """Authentication and per-key rate limits, checked before any other work."""

    def __init__(self, config: AuthConfig) -> None:
        self.keys = KeyStore(config)
        per_minute = config.requests_per_minute
        self.rate_limiter = RateLimiter(per_minute) if per_minute else None

    def admit(self, authorization: str | None) -> str:
        """The key id of the `Authorization` header's key (`-` on an open deployment); raises
        `Unauthenticated` or `RateLimited` (with the seconds to wait)."""
        if not self.keys.enabled:
            return ANONYMOUS
        key_id = self.keys.identify(authorization)
        if key_id is None:
            raise Unauthenticated(
                "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.", code="invalid_api_key"
            )
        if self.rate_limiter is not None:
            wait = self.rate_limiter.acquire(key_id)
            if wait > 0:
                raise RateLimited(
                    "Rate limit reached for this API key; retry after the time in the Retry-After header.",
                    code="rate_limit_exceeded",
                    retry_after=retry_after_header(wait),
                )
        return key_id


__all__ = ["ANONYMOUS", "OVERLOAD_RETRY_AFTER_S", "AuthConfig", "Gate", "InFlight", "KeyStore", "Slot"]
