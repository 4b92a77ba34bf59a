"""Driving the console in a real browser: Debian's Chromium under Playwright, headless.

Chromium gets a fake microphone fed from a sample WAV (played once from the start each time the page
opens the microphone), so push-to-talk and live voice hear a real caller. Every page records its
uncaught script errors and Content-Security-Policy or Trusted Types violations; `ConsolePage.check`
fails a test that caused any.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.conftest import REPO

CHROMIUM = "/usr/bin/chromium"
CALLER_WAV = REPO / "samples" / "audio" / "where_is_my_order.wav"
CALLER_WORDS = (REPO / "samples" / "audio" / "where_is_my_order.txt").read_text().strip()
AXE = REPO / "tests" / "browser" / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = REPO / "tests" / "browser" / "screenshots"  # written by the tests, not committed
DESKTOP, PHONE = {"width": 1280, "height": 800}, {"width": 390, "height": 844}
# The flags a browser needs on a machine with no network and no screen (background services off,
# or Chromium retries Google's hosts at every start), plus the fake microphone.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    f"--use-file-for-fake-audio-capture={CALLER_WAV}%noloop",
    "--autoplay-policy=no-user-gesture-required",
]
VIOLATIONS = ("Content Security Policy", "TrustedHTML", "Trusted Type", "trusted-types")
ANSWER_TIMEOUT_MS = 120_000


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)


@dataclass
class ConsolePage:
    page: object
    errors: list[str] = field(default_factory=list)

    def check(self) -> None:
        assert not self.errors, f"the page raised or violated its policy: {self.errors}"

    def send(self, text: str) -> None:
        self.page.fill("#message", text)
        self.page.press("#message", "Enter")

    def answers(self):
        return self.page.locator("article.assistant")

    def wait_answered(self, n: int) -> str:
        """The text of the `n`-th answer (1-based) once it has finished (completed or not)."""
        answer = self.answers().nth(n - 1)
        answer.and_(self.page.locator("[data-status]:not([data-status=streaming])")).wait_for(timeout=ANSWER_TIMEOUT_MS)
        # the final event is in, but the stream may still be closing: the composer is idle again only
        # after it has (Send enabled, Stop disabled), and what a test does next assumes an idle page
        self.page.locator("#send:enabled").wait_for(timeout=ANSWER_TIMEOUT_MS)
        return answer.locator(".body").inner_text()

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / name
        self.page.screenshot(path=str(path))
        return path

    def axe(self) -> list[dict]:
        """axe-core's serious and critical violations of the page as it is now (WCAG 2.x A/AA rules)."""
        self.page.evaluate(AXE.read_text())
        result = self.page.evaluate(
            "async () => JSON.stringify(await axe.run(document, {runOnly: {type: 'tag', values: "
            "['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}}))"
        )
        violations = json.loads(result)["violations"]
        return [
            {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
            for v in violations
            if v["impact"] in ("serious", "critical")
        ]


def open_console(browser, url: str, key: str | None, viewport: dict | None = None, **context) -> ConsolePage:
    """A fresh browser context (its own session storage) on the console, with `key` typed in."""
    ctx = browser.new_context(viewport=viewport or DESKTOP, **context)
    page = ctx.new_page()
    console = ConsolePage(page)
    page.on("pageerror", lambda err: console.errors.append(f"uncaught: {err}"))
    page.on("console", lambda msg: console.errors.append(msg.text) if any(v in msg.text for v in VIOLATIONS) else None)
    page.on("dialog", lambda dialog: (console.errors.append(f"a dialog opened: {dialog.message}"), dialog.dismiss()))
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready]")
    if key is not None:
        narrow = not page.locator("#key").is_visible()  # on a phone the settings are behind the menu
        if narrow:
            page.click("#menu")
        page.fill("#key", key)
        page.dispatch_event("#key", "change")
        if narrow:
            page.click("#menu")
    return console
