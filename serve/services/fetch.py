"""Remote media URLs, fetched under a strict policy (off unless `remote_media.enabled`).

A URL from a request is attacker-controlled; fetching it from inside the cluster is a classic SSRF
vector (cloud metadata at 169.254.169.254, admin ports on loopback, internal services). The policy:

- https only (http only with `allow_http`); no userinfo; the host on an explicit allowlist
  (`images.example.com` exact, `.example.com` any subdomain);
- we resolve the name ourselves and refuse the URL if *any* address is not a public unicast one
  (loopback, private, link-local, CGNAT, multicast, reserved, unspecified; IPv4 embedded in IPv6
  checked as IPv4), then connect to the checked address (the `Host` header and TLS SNI carry the
  name), so a second DNS answer cannot swap in another address (DNS rebinding);
- no redirects (a redirect could leave the allowlist), no proxies from the environment, no
  content-encoding (a decompression bomb), a byte cap enforced while streaming, one deadline for
  resolution + connect + headers + body, and an image content type.

Every refusal is an `InvalidRequest` (a 400 with an OpenAI error body); messages name at most the host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve.errors import InvalidRequest

Resolver = Callable[[str, int], Awaitable[list[str]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_MAX_BYTES = 10 * 2**20
DEFAULT_TIMEOUT_S = 10.0
REMOTE_SCHEMES = ("http", "https")
MAX_HOST_IN_MESSAGE = 64
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
# A DNS name: letters/digits/hyphens per label; the last label (TLD) starts with a letter, which
# rules out the numeric host forms inet_aton accepts (2130706433, 0x7f000001, 0177.0.0.1, 127.1).
_HOSTNAME_RE = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_REMOTE_URL_RE = re.compile(r"^https?://", re.I)
_UNSAFE_URL_CHARS = re.compile(r"[\s\\\x00-\x1f\x7f]")


class RemoteMediaConfig(BaseModel):
    """Fetching `image_url`s that are not data URLs."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Fetch remote image URLs (off: data URLs only)")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts images may come from: 'img.example.com' (exactly that host) or '.example.com' "
        "(any subdomain). Resolved addresses must still be public",
    )
    allow_http: bool = Field(False, description="Also accept plain http URLs (https only otherwise)")
    max_bytes: int = Field(DEFAULT_MAX_BYTES, ge=1, description="Largest image body; bigger ones are refused")
    timeout_s: float = Field(
        DEFAULT_TIMEOUT_S, gt=0, description="Deadline for one fetch: DNS, connect, headers and body together"
    )

    @field_validator("allowed_hosts")
    @classmethod
    def _normalise_hosts(cls, hosts: list[str]) -> list[str]:
        normalised = []
        for host in hosts:
            host = host.strip().lower().rstrip(".")
            if not host or host == "." or any(c in host for c in "/@:?#") and not _is_ip(host):
                raise ValueError(f"allowed_hosts entries are host names or '.suffix' patterns, got {host[:80]!r}")
            normalised.append(host)
        return normalised

    @model_validator(mode="after")
    def _needs_hosts(self) -> RemoteMediaConfig:
        if self.enabled and not self.allowed_hosts:
            raise ValueError("remote_media.enabled needs remote_media.allowed_hosts (no host is allowed otherwise)")
        return self


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_remote_url(url: str) -> bool:
    """An http(s) URL, which only the fetcher may handle (any other scheme is refused outright)."""
    return _REMOTE_URL_RE.match(url) is not None


def blocked_reason(address: IPAddress) -> str | None:
    """Why `address` must not be connected to, or None for a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return blocked_reason(embedded)
        if address.teredo is not None:
            return "a tunnelled address"
    checks = (
        ("is_unspecified", "an unspecified address"),
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_private", "a private address"),
        ("is_multicast", "a multicast address"),
        ("is_reserved", "a reserved address"),
    )
    for attr, reason in checks:
        if getattr(address, attr):
            return reason
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "a shared (carrier-grade NAT) address"
    if not address.is_global:
        return "a non-global address"
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for `host` (TCP)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _refuse(message: str, param: str, code: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


class RemoteMediaFetcher:
    """Fetches remote images under `RemoteMediaConfig`'s policy.

    `resolver` and `transport` are injectable for tests. `allow_private_addresses` skips the address
    check and exists for tests against loopback servers only: the service config cannot set it.
    """

    def __init__(
        self,
        config: RemoteMediaConfig,
        *,
        resolver: Resolver = system_resolver,
        transport: httpx.AsyncBaseTransport | None = None,
        allow_private_addresses: bool = False,
    ) -> None:
        self.config = config
        self._resolver = resolver
        self._transport = transport
        self._allow_private = allow_private_addresses

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def _host_allowed(self, host: str) -> bool:
        for entry in self.config.allowed_hosts:
            if entry.startswith("."):
                if host.endswith(entry):
                    return True
            elif host == entry:
                return True
        return False

    def check_url(self, url: str, param: str) -> tuple[str, str, int, str]:
        """(scheme, host, port, path+query) after the URL-level checks."""
        if not self.config.enabled:
            raise _refuse(
                "remote image URLs are disabled on this deployment; send the image as a base64 data URL",
                param,
                "remote_url_disabled",
            )
        if _UNSAFE_URL_CHARS.search(url) or not url.isascii():
            raise _refuse("the image URL contains characters URLs may not contain", param, "invalid_image_url")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as err:
            raise _refuse("the image URL could not be parsed", param, "invalid_image_url") from err
        scheme = parts.scheme.lower()
        if scheme not in REMOTE_SCHEMES:
            raise _refuse("image_url must be a data: URL or an https URL", param, "invalid_image_url")
        if scheme == "http" and not self.config.allow_http:
            raise _refuse("only https image URLs are accepted", param, "remote_url_scheme")
        if "@" in parts.netloc or parts.username is not None or parts.password is not None:
            raise _refuse("image URLs with credentials (user@host) are refused", param, "remote_url_userinfo")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise _refuse("the image URL has no host", param, "invalid_image_url")
        if not (_is_ip(host) or _HOSTNAME_RE.match(host)):
            raise _refuse("the image URL's host is not a valid host name", param, "invalid_image_url")
        if not self._host_allowed(host):
            raise _refuse(
                f"the host '{host[:MAX_HOST_IN_MESSAGE]}' is not on this deployment's remote media allowlist",
                param,
                "remote_host_not_allowed",
            )
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return scheme, host, port or (443 if scheme == "https" else 80), target

    async def _resolve(self, host: str, port: int, param: str) -> IPAddress:
        """The address to connect to, after checking every address the name resolves to."""
        if _is_ip(host):
            addresses = [host]
        else:
            try:
                addresses = await self._resolver(host, port)
            except OSError as err:
                raise _refuse(f"could not resolve '{host[:MAX_HOST_IN_MESSAGE]}'", param, "remote_fetch_failed") from err
        if not addresses:
            raise _refuse(f"could not resolve '{host[:MAX_HOST_IN_MESSAGE]}'", param, "remote_fetch_failed")
        checked = [ipaddress.ip_address(a.split("%", 1)[0]) for a in addresses]
        if not self._allow_private:
            for address in checked:
                reason = blocked_reason(address)
                if reason is not None:
                    raise _refuse(
                        f"the image host resolves to {reason}; only public addresses may be fetched",
                        param,
                        "remote_address_blocked",
                    )
        return checked[0]

    async def fetch_image(self, url: str, param: str) -> bytes:
        """The image bytes at `url`, or an `InvalidRequest` saying which rule refused it."""
        scheme, host, port, target = self.check_url(url, param)
        try:
            async with asyncio.timeout(self.config.timeout_s):
                address = await self._resolve(host, port, param)
                return await self._get(scheme, host, port, target, address, param)
        except TimeoutError as err:
            raise _refuse(
                f"fetching the image took longer than {self.config.timeout_s:g} s", param, "remote_media_timeout"
            ) from err

    async def _get(self, scheme: str, host: str, port: int, target: str, address: IPAddress, param: str) -> bytes:
        literal = f"[{address}]" if address.version == 6 else str(address)
        default_port = 443 if scheme == "https" else 80
        host_header = host if port == default_port else f"{host}:{port}"
        headers = {"Host": host_header, "Accept": "image/*", "Accept-Encoding": "identity"}
        extensions = {"sni_hostname": host} if scheme == "https" else {}
        timeout = httpx.Timeout(self.config.timeout_s)
        limit = self.config.max_bytes
        try:
            async with httpx.AsyncClient(
                transport=self._transport, follow_redirects=False, trust_env=False, timeout=timeout
            ) as client:
                request = client.build_request(
                    "GET", f"{scheme}://{literal}:{port}{target}", headers=headers, extensions=extensions
                )
                response = await client.send(request, stream=True)
                try:
                    self._check_response(response, param)
                    chunks, size = [], 0
                    async for chunk in response.aiter_raw():
                        size += len(chunk)
                        if size > limit:
                            raise self._too_large(param)
                        chunks.append(chunk)
                    return b"".join(chunks)
                finally:
                    await response.aclose()
        except httpx.TimeoutException as err:
            raise _refuse(
                f"fetching the image took longer than {self.config.timeout_s:g} s", param, "remote_media_timeout"
            ) from err
        except httpx.HTTPError as err:
            raise _refuse(
                f"could not fetch the image from '{host[:MAX_HOST_IN_MESSAGE]}' ({type(err).__name__})",
                param,
                "remote_fetch_failed",
            ) from err

    def _too_large(self, param: str) -> InvalidRequest:
        return _refuse(f"the remote image exceeds {self.config.max_bytes} bytes", param, "remote_media_too_large")

    def _check_response(self, response: httpx.Response, param: str) -> None:
        if response.is_redirect or 300 <= response.status_code < 400:
            raise _refuse("the image URL redirects; redirects are not followed", param, "remote_redirect_refused")
        if response.status_code != 200:
            raise _refuse(
                f"the image server answered HTTP {response.status_code}", param, "remote_fetch_failed"
            )
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise _refuse("compressed (content-encoding) image responses are refused", param, "remote_media_invalid")
        content_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if not content_type.startswith("image/"):
            raise _refuse(
                f"the remote content is not an image (content type '{content_type[:40]}')",
                param,
                "remote_media_invalid",
            )
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.config.max_bytes:
            raise self._too_large(param)
