"""The company policy applied to a chat request: its system prompt and handoff tool put in, the
input rail run over what the caller (and their media, and tools) said, and an answer that needs no
decoder when the rail refuses. The output rail runs where the answer is read (`chat.py`).

The policy itself (rules, normalisation, the prompt text) is `serve.policy`'s; this module only
decides where each piece of a request stands.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict

from fusion.prompt import Message
from serve.deployments.contracts import DecodeEvent
from serve.policy import Flag, Policy, UntrustedText
from serve.protocol import ChatCompletionRequest, TextPart
from serve.protocol.chat import Tool

from .media import EncodedMedia, MediaInput

MEDIA_SOURCE = {"audio": "transcript", "image": "ocr", "document": "document"}  # modality → rail source


def with_handoff(req: ChatCompletionRequest, policy: Policy) -> ChatCompletionRequest:
    """`req` with the policy's handoff tool offered, unless the request shapes its answer another
    way (a JSON format, a regex), turns tools off, or sets stop sequences (which the tool grammar
    does not take: the client's request must not become a 400 it never asked for)."""
    tool = policy.handoff_tool()
    other_shape = [f for f in req.constraint_fields() if f != "tools"]
    names = {t.function.name for t in req.tools or []}
    if tool is None or other_shape or req.stop or req.tool_choice == "none" or tool["function"]["name"] in names:
        return req
    return req.model_copy(update={"tools": [*(req.tools or []), Tool.model_validate(tool)]})


def with_system_prompt(messages: list[Message], policy: Policy) -> list[Message]:
    """The policy's system text first, in the one system message (the client's and the tools'
    listing follow it there): a small model reads one system block best."""
    prompt = policy.system_prompt()
    if messages and messages[0].role == "system":
        return [Message("system", [prompt + "\n\n", *messages[0].parts]), *messages[1:]]
    return [Message("system", [prompt]), *messages]


def untrusted_parts(
    req: ChatCompletionRequest, fresh_from: int, media: list[MediaInput], encoded: EncodedMedia
) -> list[UntrustedText]:
    """What the input rail reads: the new messages' user text and tool results, and the text the
    encoders read from their media (transcripts, OCR, documents). System messages are the
    integrator's own; stored history was read when it was new."""
    parts: list[UntrustedText] = []
    fresh_prefixes = set()
    for i, message in enumerate(req.messages):
        if i < fresh_from or message.role not in ("user", "tool"):
            continue
        fresh_prefixes.add(f"messages.{i}.")
        source = "tool" if message.role == "tool" else "user"
        if isinstance(message.content, str):
            parts.append(UntrustedText(source, message.content, f"messages.{i}.content"))
            continue
        for j, part in enumerate(message.content or []):
            if isinstance(part, TextPart):
                parts.append(UntrustedText(source, part.text, f"messages.{i}.content.{j}"))
    for item in media:
        text = encoded.texts.get(item.index)
        if text and any(item.param.startswith(prefix) for prefix in fresh_prefixes):
            parts.append(UntrustedText(MEDIA_SOURCE.get(item.spec.kind, "document"), text, item.param))
    return parts


def flag_dicts(flags: list[Flag]) -> list[dict[str, str]]:
    return [asdict(flag) for flag in flags]


def audit_codes(flags: list[Flag]) -> list[str]:
    """The audit row's flags: `code:rule`, once each (never the text that fired them)."""
    return sorted({f"{flag.code}:{flag.rule}" for flag in flags})


class RefusalStream:
    """The decoder's stream, without a decoder: the policy's refusal as one event."""

    def __init__(self, refusal: str) -> None:
        self.refusal = refusal

    def __aiter__(self) -> AsyncIterator[DecodeEvent]:
        async def events() -> AsyncIterator[DecodeEvent]:
            yield DecodeEvent(self.refusal, "stop", prompt_tokens=0, completion_tokens=0, first_token_s=0.0)

        return events()

    def cancel(self) -> None:
        pass
