"""GET /v1/conversations against the live app: the caller's stored conversations, a page at a time
(a Chorus extension: OpenAI has no list of conversations; its shape is OpenAI's other lists')."""

from __future__ import annotations

import httpx

from .conftest import API_KEY_B, AUTH

AUTH_B = {"Authorization": f"Bearer {API_KEY_B}"}


def _get(serve_url: str, path: str, headers=AUTH, **query) -> httpx.Response:
    return httpx.get(f"{serve_url}{path}", params=query, headers=dict(headers), timeout=30)


def _list(serve_url: str, headers=AUTH, **query) -> dict:
    resp = _get(serve_url, "/v1/conversations", headers, **query)
    assert resp.status_code == 200, resp.text[:500]
    page = resp.json()
    assert set(page) == {"object", "data", "first_id", "last_id", "has_more"} and page["object"] == "list", page
    return page


def _all_ids(serve_url: str, headers) -> list[str]:
    ids, after = [], None
    while True:
        page = _list(serve_url, headers, limit=100, **({"after": after} if after else {}))
        ids += [c["id"] for c in page["data"]]
        if not page["has_more"]:
            return ids
        after = page["last_id"]


def test_list_pages_the_callers_conversations_newest_first(serve_url):
    made = []
    for i in range(3):
        resp = httpx.post(f"{serve_url}/v1/conversations", json={"metadata": {"case": "list", "n": str(i)}}, headers=AUTH, timeout=30)
        assert resp.status_code == 200, resp.text[:500]
        made.append(resp.json())
    ids = [c["id"] for c in made]
    # each entry is the conversation exactly as GET /v1/conversations/{id} returns it
    assert [_get(serve_url, f"/v1/conversations/{i}").json() for i in ids] == made

    newest = _list(serve_url, limit=2)  # desc by default
    assert newest["data"] == made[:0:-1] and newest["has_more"]
    assert (newest["first_id"], newest["last_id"]) == (ids[2], ids[1])
    older = _list(serve_url, limit=2, after=newest["last_id"])
    assert older["data"][0] == made[0] and older["first_id"] == ids[0]
    later = _list(serve_url, order="asc", after=ids[0], limit=100)  # nothing of this key is newer
    assert later["data"] == made[1:] and not later["has_more"] and later["last_id"] == ids[2]

    # another key sees none of them, and cannot page from one of them
    assert not set(ids) & set(_all_ids(serve_url, AUTH_B))
    resp = _get(serve_url, "/v1/conversations", AUTH_B, after=ids[0])
    assert resp.status_code == 404 and resp.json()["error"]["param"] == "after", resp.text[:500]

    # a deleted conversation is no longer listed
    assert httpx.delete(f"{serve_url}/v1/conversations/{ids[1]}", headers=AUTH, timeout=30).status_code == 200
    assert [c["id"] for c in _list(serve_url, order="asc", after=ids[0])["data"]] == [ids[2]]


def test_list_refuses_bad_pages_in_openai_shape(serve_url):
    for query, status, param, code in (
        ({"limit": "0"}, 400, "limit", "invalid_value"),
        ({"limit": "101"}, 400, "limit", "invalid_value"),
        ({"limit": "abc"}, 400, "limit", "invalid_value"),
        ({"order": "sideways"}, 400, "order", "invalid_value"),
        ({"after": "conv_" + "0" * 32}, 404, "after", "not_found"),
    ):
        resp = _get(serve_url, "/v1/conversations", **query)
        assert resp.status_code == status, (query, resp.text[:500])
        error = resp.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], error
        assert (error["type"], error["param"], error["code"]) == (
            "invalid_request_error", param, code
        ), error
    resp = _get(serve_url, "/v1/conversations", {})
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key", resp.text[:500]
