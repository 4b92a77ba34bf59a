"""The console (serve/console/), served by the live app and driven in a real Chromium.

What each test drives: streamed text; an image attached by the file picker (and a PDF) with the OCR
text shown; push-to-talk by mouse and by keyboard from Chromium's fake microphone with the
transcript shown; live voice on the realtime socket; stopping a stream; a 401 shown from the API's
error body; stored conversations listed, opened and deleted; model output, stored text and OCR text
that carry HTML rendered as text; axe-core at desktop and phone widths; and the page's headers.
Screenshots land in tests/browser/screenshots/ (not committed).
"""

from __future__ import annotations

import io
import time
import uuid
from urllib.parse import quote

import httpx
import pytest
from PIL import Image, ImageDraw, ImageFont

from tests.integration.browser import CALLER_WAV, CALLER_WORDS, PHONE, launch, open_console
from tests.integration.conftest import API_KEY_CONSOLE, REPO

API_KEY = API_KEY_CONSOLE  # the console's tests are a tenant of their own
AUTH = {"Authorization": f"Bearer {API_KEY}"}

RECEIPT = REPO / "samples" / "images" / "receipt.jpg"
HOLD_S = 7.0  # the caller's clip is 6.35 s
PAYLOAD = "<img src=x onerror=window.__pwned=1>"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def console(browser, serve_url):
    page = open_console(browser, serve_url, API_KEY)
    yield page
    page.page.context.close()
    page.check()


def _caller_heard(text: str) -> bool:
    words = set(CALLER_WORDS.lower().replace(",", "").replace(".", "").split())
    heard = set(text.lower().replace(",", "").replace(".", "").split())
    return len(words & heard) >= len(words) // 2


# --- the page itself --------------------------------------------------------------------------------


def test_the_page_is_served_with_a_strict_content_security_policy(serve_url):
    page = httpx.get(serve_url + "/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    for rule in ("default-src 'none'", "script-src 'self'", "style-src 'self'", "object-src 'none'",
                 "frame-ancestors 'none'", "require-trusted-types-for 'script'"):
        assert rule in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "http" not in csp
    assert "<script>" not in page.text and " on" + "click=" not in page.text  # no inline script or handler
    assert httpx.get(serve_url + "/", headers={"If-None-Match": page.headers["etag"]}, timeout=30).status_code == 304
    script = httpx.get(serve_url + "/console/js/main.js", timeout=30)
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    for path in ("/console/nope.js", "/console/../../serve/config.py", "/console/%2e%2e/%2e%2e/pyproject.toml", "/console/"):
        missing = httpx.get(serve_url + path, timeout=30)
        assert missing.status_code == 404, path
        assert missing.json()["error"]["code"] == "unknown_url"


def test_every_asset_the_page_loads_comes_from_this_origin(browser, serve_url):
    console = open_console(browser, serve_url, API_KEY)
    requested: list[str] = []
    console.page.on("request", lambda r: requested.append(r.url))
    console.page.reload()
    console.page.wait_for_selector("body[data-ready]")
    console.page.wait_for_load_state("networkidle")
    assert requested and all(url.startswith(serve_url) for url in requested), requested
    # Trusted Types: a string can never become HTML in this page
    refused = console.page.evaluate("() => { try { document.body.innerHTML = '<b>x</b>'; return false } catch (e) { return e.name } }")
    assert refused == "TypeError"
    assert any("TrustedHTML" in e for e in console.errors)  # reported as a violation, as it should be
    console.errors.clear()
    console.page.context.close()
    console.check()


# --- chat ---------------------------------------------------------------------------------------------


def test_a_text_question_streams_an_answer(console):
    console.send("Where is my parcel? Answer in one sentence.")
    answer = console.wait_answered(1)
    assert answer.strip()
    assert console.answers().nth(0).get_attribute("data-status") == "completed"
    assert console.page.locator("#send").is_enabled()


def test_an_attached_image_is_read_and_answered(console):
    console.page.fill("#temperature", "0")
    console.page.set_input_files("#files", str(RECEIPT))
    preview = console.page.locator("#attachments img")
    preview.wait_for()
    assert "receipt.jpg" in preview.get_attribute("alt")
    console.send("What is the TOTAL amount?")
    answer = console.wait_answered(1)
    read = console.page.locator("article.user .read").inner_text()
    assert "TOTAL" in read and "23.85" in read  # what OCR read, shown beside the message
    assert "23.85" in answer  # the packaged model, greedy, copies the total (README "Try it")
    assert console.page.locator("article.user img.preview").count() == 1
    console.screenshot("console-desktop.png")


def test_a_pdf_is_attached_and_its_text_shown(console, tmp_path):
    from tests.pdfs import text_pdf

    pdf = tmp_path / "invoice.pdf"
    pdf.write_bytes(text_pdf([["INVOICE 2291", "Northwind Parcels", "Total due: 41.20 EUR"]]))
    console.page.set_input_files("#files", str(pdf))
    console.page.locator("#attachments li", has_text="invoice.pdf").wait_for()
    console.send("What is this document?")
    console.wait_answered(1)
    assert "INVOICE" in console.page.locator("article.user .read").inner_text().upper()


def test_images_can_be_dropped_and_pasted(console):
    page = console.page
    data = list(RECEIPT.read_bytes())
    make = """([bytes, name]) => { const t = new DataTransfer();
        t.items.add(new File([new Uint8Array(bytes)], name, {type: 'image/jpeg'})); return t; }"""
    dropped = page.evaluate_handle(make, [data, "dropped.jpg"])
    page.dispatch_event("#composer", "drop", {"dataTransfer": dropped})
    pasted = page.evaluate_handle(make, [data, "pasted.jpg"])
    page.evaluate("t => document.getElementById('message').dispatchEvent(new ClipboardEvent('paste', {clipboardData: t}))", pasted)
    names = page.locator("#attachments .name")
    names.nth(1).wait_for()
    assert names.all_inner_texts() == ["dropped.jpg", "pasted.jpg"]
    page.locator("#attachments button", has_text="Remove").first.click()
    assert names.all_inner_texts() == ["pasted.jpg"]


def test_the_fusion_mode_chosen_is_sent_and_shown(console):
    console.page.select_option("#audio-mode", "embed")
    console.page.set_input_files("#files", str(CALLER_WAV))
    console.send("What does the caller want?")
    console.wait_answered(1)
    read = console.page.locator("article.user .read").inner_text()
    assert "Heard (embed)" in read  # the clip went in as projected audio, not as a transcript


def test_answers_are_spoken_when_asked(console):
    console.page.check("#speak")
    console.page.fill("#temperature", "0")
    console.page.fill("#max-tokens", "24")
    console.send("Say hello.")
    console.wait_answered(1)
    player = console.answers().nth(0).locator("audio")
    player.wait_for(timeout=60_000)
    duration = console.page.wait_for_function(
        "a => Number.isFinite(a.duration) && a.duration > 0 ? a.duration : null", arg=player.element_handle(), timeout=30_000
    ).json_value()
    assert duration > 0.3  # real speech decoded by the browser, not an empty file


def test_push_to_talk_records_the_microphone_and_shows_the_transcript(console):
    talk = console.page.locator("#talk")
    talk.hover()
    console.page.mouse.down()
    console.page.wait_for_selector("#talk[aria-pressed=true]")
    time.sleep(HOLD_S)
    console.page.mouse.up()
    console.wait_answered(1)
    heard = console.page.locator("article.user .read blockquote").inner_text()
    assert _caller_heard(heard), heard
    assert console.page.locator("article.user audio").count() == 1  # the recording, playable


def test_a_stream_can_be_stopped_and_says_so(console):
    console.page.fill("#max-tokens", "1024")
    console.send("Write a very long story about a lighthouse keeper and her cat, in many paragraphs.")
    answer = console.answers().nth(0)
    answer.locator(".body p").first.wait_for(timeout=120_000)  # the first words are in
    console.page.click("#stop")
    badge = answer.locator(".badge.stopped")
    badge.wait_for()
    assert "Stopped" in badge.inner_text()
    console.page.locator("#send:enabled").wait_for()  # the composer is idle again
    assert console.page.locator("#stop").is_disabled()


def test_a_401_is_shown_with_the_apis_own_message(browser, serve_url):
    expected = httpx.post(serve_url + "/v1/responses", json={"model": "chorus", "input": "hi"}, timeout=30)
    assert expected.status_code == 401
    console = open_console(browser, serve_url, key=None)
    console.send("Hello?")
    alert = console.page.locator("#error")
    alert.wait_for()
    assert alert.get_attribute("role") == "alert"
    assert "401" in alert.inner_text() and expected.json()["error"]["message"] in alert.inner_text()
    assert console.answers().count() == 0
    console.page.context.close()
    console.check()


# --- conversations ----------------------------------------------------------------------------------


def test_conversations_are_listed_opened_and_deleted(console, serve_url):
    title = f"Console check {uuid.uuid4().hex[:8]}"
    console.send(title)
    console.wait_answered(1)
    entry = console.page.locator("#conversations li", has_text=title)
    entry.wait_for()
    listed = httpx.get(serve_url + "/v1/conversations?limit=100", headers=dict(AUTH), timeout=30).json()["data"]
    conversation_id = next(c["id"] for c in listed if (c.get("metadata") or {}).get("title") == title)
    console.page.click("#new-conv")
    assert console.page.locator("#log article").count() == 0
    entry.locator("button.open").click()
    console.page.locator("article.user", has_text=title).wait_for()
    assert console.answers().count() == 1
    entry.locator("button", has_text="Delete").click()
    entry.wait_for(state="detached")
    gone = httpx.get(f"{serve_url}/v1/conversations/{conversation_id}", headers=dict(AUTH), timeout=30)
    assert gone.status_code == 404


# --- nothing the model, the store or OCR says becomes HTML -------------------------------------------


def _payload_image() -> bytes:
    image = Image.new("RGB", (1400, 160), "white")
    ImageDraw.Draw(image).text((20, 50), PAYLOAD, fill="black", font=ImageFont.truetype(FONT, 48))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_html_in_model_output_stored_items_and_ocr_text_is_shown_as_text(console, serve_url, tmp_path):
    page = console.page
    made = httpx.post(serve_url + "/v1/conversations", headers=dict(AUTH), timeout=30, json={
        "metadata": {"title": "xss " + uuid.uuid4().hex[:6]},
        "items": [{"type": "message", "role": "user", "content": PAYLOAD},
                  {"type": "message", "role": "assistant", "content": f"Sure: {PAYLOAD} and <script>window.__pwned=2</script>"}],
    }).json()
    page.evaluate("() => document.getElementById('key').dispatchEvent(new Event('change'))")  # refresh the list
    page.locator("#conversations li", has_text=made["metadata"]["title"]).locator("button.open").click()
    page.locator("article.assistant", has_text="<script>window.__pwned=2</script>").wait_for()
    # live: the person's own text, the model's answer to it, and OCR text of an image that says it
    console.send(f"Repeat exactly: {PAYLOAD}")
    console.wait_answered(2)
    shot = tmp_path / "payload.png"
    shot.write_bytes(_payload_image())
    page.set_input_files("#files", str(shot))
    console.send("What does this say?")
    console.wait_answered(3)
    read = page.locator("article.user .read blockquote").last.inner_text()
    assert "onerror" in read.replace(" ", ""), read
    assert page.locator("#log article.user", has_text=PAYLOAD).count() == 2
    assert page.locator("#log img:not(.preview)").count() == 0 and page.locator("#log script").count() == 0
    assert page.evaluate("() => window.__pwned") is None


# --- keyboard only, accessibility, phone ------------------------------------------------------------


def test_keyboard_only_send_and_push_to_talk(console):
    page = console.page
    page.reload()  # the key stays in this tab's session storage; focus starts from the top again
    page.wait_for_selector("body[data-ready]")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to the message box"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "message"
    page.keyboard.type("Hello there")
    page.keyboard.press("Enter")
    console.wait_answered(1)
    order = []
    page.focus("#message")
    for _ in range(4):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id"))
    assert order == ["attach", "talk", "live", "send"]  # Stop is disabled while nothing streams
    page.focus("#talk")
    page.keyboard.down("Space")
    page.wait_for_selector("#talk[aria-pressed=true]")
    time.sleep(HOLD_S)
    page.keyboard.up("Space")
    console.wait_answered(2)
    assert _caller_heard(page.locator("article.user .read blockquote").last.inner_text())


def test_no_serious_accessibility_violations_on_desktop(console):
    console.page.set_input_files("#files", str(RECEIPT))
    console.send("What is the TOTAL amount?")
    console.wait_answered(1)
    assert console.axe() == []


def test_no_serious_accessibility_violations_on_a_phone(browser, serve_url):
    console = open_console(browser, serve_url, API_KEY, viewport=PHONE, is_mobile=True, has_touch=True)
    console.send("Where is my parcel?")
    console.wait_answered(1)
    console.screenshot("console-phone.png")
    assert console.axe() == []
    console.page.click("#menu")
    assert console.page.locator("#side").is_visible()
    assert console.axe() == []
    console.page.context.close()
    console.check()


# --- live voice -------------------------------------------------------------------------------------


def test_live_voice_hears_the_caller_and_answers(console):
    page = console.page
    page.click("#live")
    assert page.locator("#live").get_attribute("aria-pressed") == "true"
    heard = page.locator("article.user", has_text="live voice").locator(".body")
    page.wait_for_function(
        "() => [...document.querySelectorAll('article.user .body')].some(b => b.textContent.length > 10)", timeout=120_000
    )
    assert _caller_heard(heard.first.inner_text()), heard.first.inner_text()
    page.wait_for_function(
        "() => [...document.querySelectorAll('article.assistant .body')].some(b => b.textContent.trim().length > 0)",
        timeout=120_000,
    )
    page.click("#live")
    assert page.locator("#live").get_attribute("aria-pressed") == "false"
    assert "ended" in page.locator("#voice-status").inner_text()


# --- hostile paths: the console's routes join the corpus ----------------------------------------------

CONSOLE_PATH_CASES = [
    ("head-page", "HEAD", "/", 200, None),
    ("post-page", "POST", "/", 405, "method_not_allowed"),
    ("delete-asset", "DELETE", "/console/js/main.js", 405, "method_not_allowed"),
    ("dotdot-encoded", "GET", "/console/%2e%2e/%2e%2e/serve/config.py", 404, "unknown_url"),
    ("dotdot-backslash", "GET", "/console/..%5c..%5cpyproject.toml", 404, "unknown_url"),
    ("absolute", "GET", "/console//etc/passwd", 404, "unknown_url"),
    ("nul", "GET", "/console/index.html%00.js", 404, "unknown_url"),
    ("invalid-utf8", "GET", "/console/%ED%A0%80", 404, "unknown_url"),
    ("long-name", "GET", "/console/" + "a" * 5000, 404, "unknown_url"),
    ("dotfile", "GET", "/console/.gitignore", 404, "unknown_url"),
    ("directory", "GET", "/console/js", 404, "unknown_url"),
    ("source-module", "GET", "/console/../http/console.py", 404, "unknown_url"),
]


@pytest.mark.parametrize("case,method,path,status,code", CONSOLE_PATH_CASES, ids=[c[0] for c in CONSOLE_PATH_CASES])
def test_console_routes_hostile_paths(serve_url, case, method, path, status, code):
    resp = httpx.request(method, serve_url + path, timeout=30)
    assert resp.status_code == status, resp.text[:300]
    if code is not None:
        error = resp.json()["error"]
        assert error["code"] == code and len(resp.content) < 2000


def test_console_routes_random_paths_are_files_or_404(serve_url):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    known = {"index.html", "console.css", "icon.svg"}

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60))
    def probe(name):
        resp = httpx.get(serve_url + "/console/" + quote(name, safe="/"), timeout=30)
        assert resp.status_code in (200, 404), (name, resp.status_code)
        if resp.status_code == 200:
            assert name in known or name.startswith("js/"), name

    probe()


# --- explanations -----------------------------------------------------------------------------------


def test_an_explained_answer_draws_shares_the_words_heard_and_the_image_heatmap(console):
    page = console.page
    page.check("#explain")
    page.fill("#max-tokens", "24")
    page.set_input_files("#files", [str(CALLER_WAV), str(RECEIPT)])
    console.send("What does the caller want, and what is the total?")
    console.wait_answered(1)
    why = console.answers().nth(0).locator(".why")
    why.wait_for()
    kinds = why.locator("tr th:first-child").all_inner_texts()[1:]
    assert sorted(kinds) == ["Audio", "Image", "Your text"]
    shares = [float(m.get_attribute("value")) for m in why.locator("meter").all()]
    assert abs(sum(shares) - 1.0) < 0.01
    words = page.locator("article.user .words span")
    assert words.count() > 5  # one per word Whisper heard, tinted by relevance
    heatmap = page.locator("article.user canvas.heatmap")
    heatmap.wait_for()
    assert "attended most" in heatmap.get_attribute("aria-label")
    why.scroll_into_view_if_needed()
    console.screenshot("console-explain.png")
    assert console.axe() == []
