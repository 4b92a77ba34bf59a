"""The ingress replica stays light: its resident memory at rest (it imports no model code and loads
no tokenizer), and after the hostile chat corpus (every body parsed, media relayed, errors mapped).

Bars from the Architecture II issue: ≤ 500 MB at rest (goal 300 MB), ≤ +100 MB after the corpus.
Resident memory is a resource bound, not a timing; the figures are printed for the record."""

from __future__ import annotations

import httpx
import psutil

from .conftest import AUTH
from .test_hostile import CHAT_CASES

INGRESS_TITLE = "ServeReplica:chorus:Ingress"
MiB = 2**20
REST_BAR_MB = 500
GROWTH_BAR_MB = 100


def ingress_processes() -> list[psutil.Process]:
    """The shared app's ingress replicas: this test process started that cluster, so they descend
    from it (another cluster on the host, e.g. the deploy test's, does not)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmdline = proc.cmdline()
        except psutil.Error:  # ended meanwhile
            continue
        if cmdline and INGRESS_TITLE in cmdline[0]:
            found.append(proc)
    return found


def rss_mb() -> float:
    procs = ingress_processes()
    assert len(procs) == 1, f"expected one ingress replica, found {len(procs)}"
    return procs[0].memory_info().rss / MiB


def test_ingress_rss_at_rest_and_after_the_hostile_corpus(serve_url: str) -> None:
    assert httpx.get(f"{serve_url}/health", timeout=30).status_code == 200
    at_rest = rss_mb()
    for _case, body, _status in CHAT_CASES:
        kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
        httpx.post(f"{serve_url}/v1/chat/completions", headers=AUTH, timeout=120, **kwargs)
    after = rss_mb()
    print(f"ingress RSS: {at_rest:.0f} MB at rest, {after:.0f} MB after {len(CHAT_CASES)} hostile requests")
    assert at_rest <= REST_BAR_MB, f"the ingress holds {at_rest:.0f} MB at rest"
    assert after - at_rest <= GROWTH_BAR_MB, f"the ingress grew {after - at_rest:.0f} MB ({at_rest:.0f} → {after:.0f})"
