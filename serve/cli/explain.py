"""`chorus explain`: send a chat request with `chorus.explain`, print the answer and how much each modality
mattered to it, and draw the explanation as a PNG (serve/cli/explain_render.py). `--from-response` draws a
saved response instead, without the service."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from serve.cli.common import add_command

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_OUT = "explanation.png"
DEFAULT_TIMEOUT_S = 300.0
API_KEY_ENV = ("CHORUS_API_KEY", "OPENAI_API_KEY")
CHAT_PATH = "/v1/chat/completions"
TOP_SEGMENTS = 5


class ExplainError(Exception):
    """Something to tell the user (one line, no traceback) before exiting 1."""


def add_parser(subparsers) -> None:
    explain = add_command(
        subparsers, "explain", "explain a chat request's answer: per-modality table and a PNG", _cmd_explain,
        description="Send a /v1/chat/completions request with chorus.explain (and stream: false), print the answer "
        "and each modality's attention share and ablation Δ log-prob, and draw the explanation as a PNG: the "
        "audio's waveform over a relevance strip, images under a relevance heatmap, the messages' sentences tinted "
        "by relevance. --from-response draws a saved response instead of calling the service.",
    )
    explain.add_argument("request", metavar="REQUEST.json", help="a /v1/chat/completions body (media as base64 data)")
    explain.add_argument("--url", default=DEFAULT_URL, help="the service's base URL")
    explain.add_argument(
        "--api-key", default=None, help="bearer key (default: $CHORUS_API_KEY, else $OPENAI_API_KEY, else none)"
    )
    explain.add_argument("--out", default=DEFAULT_OUT, help="where to write the PNG")
    explain.add_argument(
        "--from-response", metavar="RESPONSE.json", default=None,
        help="draw this saved response to REQUEST.json instead of calling the service",
    )
    explain.add_argument("--save-response", metavar="RESPONSE.json", default=None, help="also save the response here")
    explain.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds to wait for the answer")


def _cmd_explain(args: argparse.Namespace) -> int:
    from serve.cli.explain_render import ExplanationMissing, explanation_of, render

    try:
        request = read_json(args.request, "request")
        if not isinstance(request.get("messages"), list):
            raise ExplainError(f"{args.request}: not a chat completions request (no messages list)")
        if args.from_response:
            response = read_json(args.from_response, "response")
        else:
            api_key = args.api_key or next((os.environ[k] for k in API_KEY_ENV if os.environ.get(k)), None)
            response = call_service(request, args.url, api_key, timeout=args.timeout)
        if args.save_response:
            _write(Path(args.save_response), lambda p: p.write_text(json.dumps(response, indent=2) + "\n"))
        explanation = explanation_of(response)
        print(summary(response, explanation))
        image = render(request, response)
        _write(Path(args.out), lambda p: image.save(p, format="PNG"))
    except (ExplainError, ExplanationMissing) as err:
        print(f"chorus explain: {err}", file=sys.stderr)
        return 1
    print(f"\nwrote {args.out} ({image.width}×{image.height} px)")
    return 0


def read_json(path: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(Path(path).read_text())
    except OSError as err:
        raise ExplainError(f"cannot read the {what} {path}: {err.strerror or err}") from None
    except json.JSONDecodeError as err:
        raise ExplainError(f"{path} is not JSON: {err}") from None
    if not isinstance(value, dict):
        raise ExplainError(f"{path}: the {what} must be a JSON object")
    return value


def _write(path: Path, save) -> None:
    try:
        save(path)
    except OSError as err:
        raise ExplainError(f"cannot write {path}: {err.strerror or err}") from None


def explain_body(request: dict[str, Any]) -> dict[str, Any]:
    """The request as sent: not streamed, with `chorus.explain` on (its other chorus fields kept)."""
    body = {key: value for key, value in request.items() if key != "stream_options"}
    chorus = body.get("chorus") if isinstance(body.get("chorus"), dict) else {}
    return {**body, "stream": False, "chorus": {**chorus, "explain": True}}


def endpoint(url: str) -> str:
    """`url`'s chat completions route (a base URL, with or without /v1, or the route itself)."""
    base = url.rstrip("/")
    if base.endswith(CHAT_PATH):
        return base
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return base + CHAT_PATH


def call_service(
    request: dict[str, Any], url: str, api_key: str | None, timeout: float = DEFAULT_TIMEOUT_S, transport=None
) -> dict[str, Any]:
    """POST the request with `chorus.explain`; the completion, or an ExplainError with the API's error."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    target = endpoint(url)
    try:
        with httpx.Client(timeout=timeout, transport=transport) as client:
            reply = client.post(target, json=explain_body(request), headers=headers)
    except httpx.HTTPError as err:
        raise ExplainError(f"no answer from {target}: {err or type(err).__name__}") from None
    try:
        body = reply.json()
    except ValueError:
        body = None
    if reply.is_error or not isinstance(body, dict) or "error" in body:
        raise ExplainError(api_error(reply.status_code, reply.reason_phrase, body, reply.text))
    return body


def api_error(status: int, reason: str, body: Any, text: str) -> str:
    """One line for an error reply: OpenAI's {"error": {"message", "code", "param"}}, else the raw body."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        details = ", ".join(f"{key}: {error[key]}" for key in ("code", "param", "type") if error.get(key))
        return f"HTTP {status}: {error.get('message') or '(no message)'}" + (f" ({details})" if details else "")
    snippet = " ".join(text.split())[:300]
    return f"HTTP {status} {reason}: {snippet or '(empty body)'}" if status >= 400 else f"not a completion: {snippet}"


def summary(response: dict[str, Any], explanation: dict[str, Any]) -> str:
    """The answer, the per-modality table and the most relevant segments, as printed."""
    from serve.cli.explain_render import MODALITY_ORDER, answer_text

    answer = explanation.get("answer") or {}
    lines = [f"answer: {answer_text(response) or '(no text)'}"]
    if answer:
        lines.append(f"        ({answer.get('tokens', '?')} tokens, log-prob {_number(answer.get('logprob'), '.2f')})")
    modalities = explanation.get("modalities") or {}
    kinds = sorted(modalities, key=lambda k: (MODALITY_ORDER.index(k) if k in MODALITY_ORDER else 99, k))
    lines += ["", f"{'modality':<14}{'attention':>10}{'Δ log-prob':>12}{'tokens':>8}"]
    for kind in kinds:
        entry = modalities[kind] or {}
        share = entry.get("attention_share")
        share_text = f"{share:.1%}" if isinstance(share, int | float) else "?"
        delta = _number(entry.get("ablation_delta_logprob"), "+.2f")
        lines.append(f"{kind:<14}{share_text:>10}{delta:>12}{entry.get('tokens', '?')!s:>8}")
    lines.append("(Δ log-prob: how the answer's log-prob changes without that input; negative = the input helped)")
    segments = [s for s in explanation.get("segments") or [] if isinstance(s, dict)]
    ranked = sorted(segments, key=lambda s: -_relevance(s))[:TOP_SEGMENTS]
    if ranked:
        lines += ["", "most relevant segments:"]
        lines += [f"  {_relevance(s):6.3f}  {describe(s)}" for s in ranked]
    method = explanation.get("method") or {}
    if method:
        lines += ["", f"method: {_number(method.get('cost_ms'), '.1f')} ms, {method.get('passes', '?')} passes"]
    return "\n".join(lines)


def describe(segment: dict[str, Any]) -> str:
    """A segment in a few words: its kind, which media item or message, and its time, box or text."""
    kind = segment.get("kind", "?")
    where = f"#{segment['media']}" if "media" in segment else f"message {segment.get('message', '?')}"
    if isinstance(segment.get("start_s"), int | float):
        detail = f"{segment['start_s']:.2f}–{_number(segment.get('end_s'), '.2f')} s"
    elif segment.get("text"):
        text = " ".join(str(segment["text"]).split())
        detail = json.dumps(text[:60] + ("…" if len(text) > 60 else ""), ensure_ascii=False)
    elif segment.get("box"):
        detail = f"box {segment['box']}"
    else:
        detail = ""
    return f"{kind} {where} {detail}".rstrip()


def _relevance(segment: dict[str, Any]) -> float:
    value = segment.get("relevance")
    return float(value) if isinstance(value, int | float) else 0.0


def _number(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else "?"
