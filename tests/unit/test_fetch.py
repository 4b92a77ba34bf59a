"""Remote media fetching: SSRF refusals with real name resolution, and the fetch path against a real
loopback HTTP server (redirects, size cap, slow server) with loopback allowed through the fetcher's
test-only `allow_private_addresses` parameter (never through the service config)."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from serve.errors import InvalidRequest
from serve.services.fetch import RemoteMediaConfig, RemoteMediaFetcher, blocked_reason
from serve.services.media import decode_image_url

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2
ALLOWED = [
    "localhost", "127.0.0.1", "::1", "0.0.0.0", "169.254.169.254", "10.0.0.1", "192.168.1.1",
    "::ffff:127.0.0.1", "allowed.com", "example.com", ".example.com",
]


def fetcher(**overrides) -> RemoteMediaFetcher:
    options = {"enabled": True, "allowed_hosts": ALLOWED, "allow_http": True, "timeout_s": 5.0}
    kwargs = {k: overrides.pop(k) for k in ("resolver", "transport", "allow_private_addresses") if k in overrides}
    return RemoteMediaFetcher(RemoteMediaConfig(**{**options, **overrides}), **kwargs)


def refused(f: RemoteMediaFetcher, url: str) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        asyncio.run(f.fetch_image(url, "messages.0.content.0.image_url.url"))
    err = info.value
    assert err.param == "messages.0.content.0.image_url.url"
    assert url not in err.message  # never echoes the URL
    return err


@pytest.mark.parametrize(
    "url",
    [
        "https://localhost/cat.png",  # allowlisted, but resolves to loopback
        "https://127.0.0.1/cat.png",
        "https://[::1]/cat.png",
        "https://0.0.0.0/cat.png",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "https://10.0.0.1/cat.png",
        "https://192.168.1.1/cat.png",
        "https://[::ffff:127.0.0.1]/cat.png",
        "https://127.0.0.1#@allowed.com",  # the fragment hides nothing: the host is 127.0.0.1
        "https://localhost:8265/api/jobs/",  # Ray's dashboard port
    ],
)
def test_private_and_loopback_refused_after_resolution(url):
    assert refused(fetcher(), url).code == "remote_address_blocked"


@pytest.mark.parametrize(
    "url,code",
    [
        ("http://2130706433/cat.png", "invalid_image_url"),  # 127.0.0.1 as one decimal number
        ("http://0x7f000001/cat.png", "invalid_image_url"),
        ("http://017700000001/cat.png", "invalid_image_url"),
        ("http://127.1/cat.png", "invalid_image_url"),
        ("file:///etc/passwd", "invalid_image_url"),
        ("ftp://example.com/cat.png", "invalid_image_url"),
        ("gopher://example.com/", "invalid_image_url"),
        ("https://allowed.com@127.0.0.1/cat.png", "remote_url_userinfo"),
        ("https://user:pw@example.com/cat.png", "remote_url_userinfo"),
        ("https://allowed.com\\@127.0.0.1/", "invalid_image_url"),
        ("https://example.com/ cat.png", "invalid_image_url"),
        ("https://example.com:99999/cat.png", "invalid_image_url"),
        ("https://evil.net/cat.png", "remote_host_not_allowed"),
        ("https://notexample.com/cat.png", "remote_host_not_allowed"),  # '.example.com' is a suffix match
        ("https://example.com.evil.net/cat.png", "remote_host_not_allowed"),
        ("https://[::2]/cat.png", "remote_host_not_allowed"),
    ],
)
def test_url_level_refusals(url, code):
    assert refused(fetcher(), url).code == code


def test_http_needs_the_flag():
    assert refused(fetcher(allow_http=False), "http://example.com/cat.png").code == "remote_url_scheme"


def test_loopback_literal_not_allowlisted():
    f = fetcher(allowed_hosts=["allowed.com"])
    assert refused(f, "https://127.0.0.1#@allowed.com").code == "remote_host_not_allowed"


def test_disabled_by_default():
    f = RemoteMediaFetcher(RemoteMediaConfig())
    assert not f.enabled
    assert refused(f, "https://example.com/cat.png").code == "remote_url_disabled"


def test_enabled_needs_an_allowlist():
    with pytest.raises(ValueError, match="allowed_hosts"):
        RemoteMediaConfig(enabled=True)
    with pytest.raises(ValueError, match="host names"):
        RemoteMediaConfig(enabled=True, allowed_hosts=["https://example.com/"])


def test_any_private_address_in_the_answer_refuses():
    async def resolver(host, port):
        assert host == "cdn.example.com"
        return ["93.184.215.14", "10.0.0.7"]  # a rebinding-style mixed answer

    assert refused(fetcher(resolver=resolver), "https://cdn.example.com/cat.png").code == "remote_address_blocked"


def test_unresolvable_host():
    async def resolver(host, port):
        raise OSError("Name or service not known")

    assert refused(fetcher(resolver=resolver), "https://img.example.com/cat.png").code == "remote_fetch_failed"


def test_connection_pinned_to_the_checked_address():
    """The request goes to the checked IP; the name travels in Host and TLS SNI, not to a resolver."""
    seen = {}

    async def resolver(host, port):
        return ["93.184.215.14"]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.update(host=request.url.host, port=request.url.port or 443, header=request.headers["host"],
                    sni=request.extensions.get("sni_hostname"), path=request.url.raw_path)
        return httpx.Response(200, headers={"content-type": "image/png"}, stream=httpx.ByteStream(PNG))

    f = fetcher(resolver=resolver, transport=httpx.MockTransport(handler))
    data = asyncio.run(f.fetch_image("https://img.example.com/a/cat.png?size=2", "p"))
    assert data == PNG
    assert seen == {"host": "93.184.215.14", "port": 443, "header": "img.example.com", "sni": "img.example.com",
                    "path": b"/a/cat.png?size=2"}


def test_non_image_content_type_refused():
    async def resolver(host, port):
        return ["93.184.215.14"]

    transport = httpx.MockTransport(lambda r: httpx.Response(200, headers={"content-type": "text/html"}, content=b"<html>"))
    f = fetcher(resolver=resolver, transport=transport)
    assert refused(f, "https://img.example.com/cat.png").code == "remote_media_invalid"


@pytest.mark.parametrize(
    "address,blocked",
    [
        ("8.8.8.8", False),
        ("2606:4700::1111", False),
        ("224.0.0.1", True),  # multicast (is_global says True for it)
        ("100.64.0.1", True),  # carrier-grade NAT
        ("240.0.0.1", True),
        ("255.255.255.255", True),
        ("2002:7f00:1::", True),  # 6to4 wrapping 127.0.0.1
        ("64:ff9b::a00:1", True),  # NAT64 wrapping 10.0.0.1
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", True),  # Teredo
        ("fe80::1", True),
        ("fc00::1", True),
        ("::", True),
    ],
)
def test_blocked_reason(address, blocked):
    assert (blocked_reason(ipaddress.ip_address(address)) is not None) is blocked


def test_router_refuses_remote_urls_without_a_fetcher():
    with pytest.raises(InvalidRequest) as info:
        asyncio.run(decode_image_url("https://example.com/cat.png", "p", fetcher=None))
    assert info.value.code == "remote_url_disabled"


# --- a real loopback server --------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        if self.path == "/cat.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG)))
            self.send_header("X-Seen-Host", self.headers.get("Host", ""))
            self.end_headers()
            self.wfile.write(PNG)
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_port}/cat.png")
            self.end_headers()
        elif self.path == "/big":  # no Content-Length: the cap must stop the read
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            try:
                for _ in range(200):
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                pass
        elif self.path == "/big-declared":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
        elif self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.flush()
            time.sleep(3)
            try:
                self.wfile.write(PNG)
            except OSError:
                pass
        elif self.path == "/gzip":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"\x1f\x8b\x08\x00")
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


def loopback_fetcher(**overrides) -> RemoteMediaFetcher:
    return fetcher(allow_private_addresses=True, max_bytes=overrides.pop("max_bytes", 64 * 1024), **overrides)


def test_loopback_is_refused_without_the_test_flag(server):
    assert refused(fetcher(), f"{server}/cat.png").code == "remote_address_blocked"


def test_fetches_an_image(server):
    assert asyncio.run(loopback_fetcher().fetch_image(f"{server}/cat.png", "p")) == PNG


def test_fetch_sends_the_name_as_host(server):
    async def resolver(host, port):
        return ["127.0.0.1"]

    port = server.rsplit(":", 1)[1]
    f = loopback_fetcher(resolver=resolver)
    seen = {}

    async def go():
        # Observe the Host header the server saw through a transport that records the response.
        class Recording(httpx.AsyncHTTPTransport):
            async def handle_async_request(self, request):
                response = await super().handle_async_request(request)
                seen["host"] = response.headers.get("x-seen-host")
                return response

        f._transport = Recording()
        return await f.fetch_image(f"http://img.example.com:{port}/cat.png", "p")

    assert asyncio.run(go()) == PNG
    assert seen["host"] == f"img.example.com:{port}"


def test_redirect_refused(server):
    assert refused(loopback_fetcher(), f"{server}/redirect").code == "remote_redirect_refused"


def test_body_over_the_cap_refused_while_streaming(server):
    started = time.perf_counter()
    assert refused(loopback_fetcher(max_bytes=100_000), f"{server}/big").code == "remote_media_too_large"
    assert time.perf_counter() - started < 3


def test_declared_length_over_the_cap_refused(server):
    assert refused(loopback_fetcher(), f"{server}/big-declared").code == "remote_media_too_large"


def test_slow_server_times_out(server):
    started = time.perf_counter()
    err = refused(loopback_fetcher(timeout_s=0.5), f"{server}/slow")
    assert err.code == "remote_media_timeout" and "0.5 s" in err.message
    assert time.perf_counter() - started < 2.5


def test_http_error_status(server):
    assert refused(loopback_fetcher(), f"{server}/missing.png").code == "remote_fetch_failed"


def test_content_encoding_refused(server):
    assert refused(loopback_fetcher(), f"{server}/gzip").code == "remote_media_invalid"


def _request_with_images(*urls: str):
    from serve.protocol import ChatCompletionRequest

    parts = [{"type": "text", "text": "compare"}] + [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return ChatCompletionRequest.model_validate({"model": "chorus", "messages": [{"role": "user", "content": parts}]})


def test_extract_fetches_remote_images_in_order():
    from serve.services.media import extract

    async def resolver(host, port):
        return ["93.184.215.14"]

    def handler(request: httpx.Request) -> httpx.Response:
        body = PNG + request.url.path.encode()
        return httpx.Response(200, headers={"content-type": "image/png"}, stream=httpx.ByteStream(body))

    f = fetcher(resolver=resolver, transport=httpx.MockTransport(handler))
    request = _request_with_images("https://a.example.com/1.png", "data:image/png;base64,AAEC", "https://b.example.com/2.png")
    _, media = asyncio.run(extract(request, f, max_media=4))
    assert [m.data for m in media] == [PNG + b"/1.png", b"\x00\x01\x02", PNG + b"/2.png"]
    assert media[2].param == "messages.0.content.3"


def test_extract_refuses_by_policy_before_any_fetch():
    from serve.services.media import extract

    async def resolver(host, port):
        raise AssertionError("no lookup may happen when a later URL breaks the policy")

    request = _request_with_images("https://a.example.com/1.png", "https://evil.net/2.png")
    with pytest.raises(InvalidRequest) as info:
        asyncio.run(extract(request, fetcher(resolver=resolver), max_media=4))
    assert info.value.code == "remote_host_not_allowed" and info.value.param == "messages.0.content.2.image_url.url"
