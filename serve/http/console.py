"""The console: a web page to try and operate Chorus, served by the ingress itself (same origin).

Plain HTML, CSS and JavaScript modules from `serve/console/`, read once when the replica starts and
served from memory: only the files that are there, by exact name (no path is ever joined from the
URL). Every answer carries a strict Content-Security-Policy: scripts and styles from this origin
only (no inline script, no eval), no plugins, no framing, and Trusted Types required, so a string
can never become HTML through `innerHTML` — the page builds every node, model output and OCR text
included, with `textContent`. The page talks to the public API only, with the key the person types.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from fastapi.responses import Response

from serve.errors import NotFound

ROOT = Path(__file__).resolve().parents[1] / "console"
PREFIX = "/console/"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon"}
# connect-src 'self' covers ws(s):// to this host (CSP Level 3), the realtime voice mode's socket.
# media-src/img-src blob: and data: are the previews of the person's own attachments and recordings.
CSP = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' blob: data:",
    "media-src 'self' blob: data:",
    "connect-src 'self'",
    "worker-src 'self'",
    "font-src 'self'",
    "manifest-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
    "object-src 'none'",
    "require-trusted-types-for 'script'",
    "trusted-types 'none'",
])
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # the microphone for push-to-talk and live voice, on this origin only; nothing else
    "Permissions-Policy": "microphone=(self), camera=(), geolocation=(), payment=(), usb=()",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load(root: Path = ROOT) -> dict[str, Asset]:
    """Every file under `root`, keyed by its path relative to it ('index.html', 'js/chat.js')."""
    assets = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            body = path.read_bytes()
            kind = TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            assets[path.relative_to(root).as_posix()] = Asset(body, kind, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return assets


class Console:
    """The console's files; `None` assets when the operator turned it off (`console: false`)."""

    def __init__(self, enabled: bool, root: Path = ROOT) -> None:
        self.assets = load(root) if enabled else None

    def page(self, name: str, if_none_match: str | None) -> Response:
        asset = self.assets.get(name) if self.assets is not None else None
        if asset is None:
            where = "/" if name == "index.html" else PREFIX + name[:200]
            raise NotFound(f"Invalid URL (GET {where}).", code="unknown_url")
        headers = {**HEADERS, "ETag": asset.etag, "Cache-Control": "no-cache"}
        if if_none_match == asset.etag:
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.content_type, headers=headers)
