"""API keys (plain and hashed, config and env) and the per-key token bucket."""

from __future__ import annotations

import pytest

from serve.admission.auth import AuthConfig, KeyStore, RateLimiter, digest, retry_after_header


def test_open_without_keys():
    store = KeyStore(AuthConfig(), environ={})
    assert not store.enabled


def test_plain_hashed_and_env_keys():
    config = AuthConfig(api_keys=["sk-plain", "sha256:" + digest("sk-hashed")])
    store = KeyStore(config, environ={"CHORUS_API_KEYS": " sk-env ,"})
    for key in ("sk-plain", "sk-hashed", "sk-env"):
        assert store.identify(f"Bearer {key}") == digest(key)[:12]
    for header in (None, "", "Bearer", "Bearer sk-wrong", "sk-plain", "Basic sk-plain"):
        assert store.identify(header) is None


def test_required_keys_refuse_to_start():
    with pytest.raises(ValueError, match="requires API keys"):
        KeyStore(AuthConfig(require_api_keys=True), environ={})
    assert KeyStore(AuthConfig(require_api_keys=True), environ={"CHORUS_API_KEYS": "k"}).enabled


def test_token_bucket_refills():
    now = [100.0]
    limiter = RateLimiter(per_minute=2, clock=lambda: now[0])
    assert limiter.acquire("a") == 0 and limiter.acquire("a") == 0
    wait = limiter.acquire("a")
    assert wait == pytest.approx(30.0)  # one token per 30 s at 2/minute
    assert limiter.acquire("b") == 0  # keys are independent
    now[0] += 30.0
    assert limiter.acquire("a") == 0
    assert retry_after_header(0.2) == "1" and retry_after_header(29.1) == "30"
