"""The ingress's admission limit and request deadline, on `_respond` directly (no Ray needed)."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.responses import JSONResponse
from starlette.requests import Request

import serve.ingress as ingress
from serve.config import LimitsConfig


def request() -> Request:
    return Request({"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [], "query_string": b""})


@pytest.fixture(autouse=True)
def clean_counters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingress, "_in_flight", {})


def test_deadline_gives_504_with_openai_body() -> None:
    started = []

    async def slow() -> JSONResponse:
        started.append(True)
        await asyncio.sleep(5)
        return JSONResponse({})

    response = asyncio.run(ingress._respond(request(), "/r", slow(), None, limits=LimitsConfig(request_timeout_s=0.05)))
    assert response.status_code == 504 and started
    assert json.loads(response.body)["error"]["code"] == "timeout"
    assert ingress._in_flight["/r"] == 0  # counted out again


def test_admission_limit_refuses_before_the_handler_runs() -> None:
    ran = []

    async def handler() -> JSONResponse:
        ran.append(True)
        return JSONResponse({"ok": True})

    limits = LimitsConfig(max_in_flight=2)
    ingress._in_flight.update({"/a": 1, "/b": 1})  # two requests in flight, on any routes
    response = asyncio.run(ingress._respond(request(), "/a", handler(), None, limits=limits))
    assert response.status_code == 503 and not ran
    assert response.headers["retry-after"] == str(ingress.OVERLOAD_RETRY_AFTER_S)
    assert json.loads(response.body)["error"]["code"] == "overloaded"

    ingress._in_flight["/b"] = 0  # one slot free again
    response = asyncio.run(ingress._respond(request(), "/a", handler(), None, limits=limits))
    assert response.status_code == 200 and ran
