"""OpenAI's Realtime protocol (`/v1/realtime`): the session a client configures and the client
events this server understands, GA names first, the beta names where they differ only in shape.

A session update is merged into the current session (fields left out keep their value); what it
sets is validated here and refused whole (an `error` event naming the field) when any part is wrong.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

PCM_RATE = 24_000  # `audio/pcm`: 24 kHz mono s16le, both ways
MAX_EVENT_BYTES = 16 * 2**20  # a client event over this closes the socket (1009, message too big)
MAX_INSTRUCTIONS = 100_000
MAX_RESPONSE_TOKENS = 4096

CLIENT_EVENTS = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.delete",
    "response.create",
    "response.cancel",
    "output_audio_buffer.clear",
)
# Beta format names → GA's; G.711 (pcmu/pcma, 8 kHz) is not decoded here.
_BETA_FORMATS = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}


class ProtocolError(ValueError):
    """A client event this server refuses: becomes an `error` event, the socket stays open."""

    def __init__(self, message: str, *, code: str = "invalid_value", param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


class TurnDetection(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["server_vad"] = "server_vad"
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    prefix_padding_ms: int = Field(300, ge=0, le=5000)
    silence_duration_ms: int = Field(500, ge=0, le=10_000)
    create_response: bool = True
    interrupt_response: bool = True


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"] = "function"
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Session(BaseModel):
    """A realtime session's settings, as `session.created` / `session.updated` report them."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    id: str
    model: str
    instructions: str = Field("", max_length=MAX_INSTRUCTIONS)
    output_modalities: list[Literal["text", "audio"]] = Field(default_factory=lambda: ["audio"], min_length=1, max_length=1)
    voice: str = "alloy"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    input_format: Literal["audio/pcm"] = "audio/pcm"
    output_format: Literal["audio/pcm"] = "audio/pcm"
    transcription: dict[str, Any] | None = None  # {"model": ...}: emit input transcription events
    turn_detection: TurnDetection | None = Field(default_factory=TurnDetection)
    tools: list[FunctionTool] = Field(default_factory=list, max_length=128)
    tool_choice: str | dict[str, Any] = "auto"
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_output_tokens: Annotated[int, Field(ge=1, le=MAX_RESPONSE_TOKENS)] | Literal["inf"] = "inf"

    def speaks(self) -> bool:
        return "audio" in self.output_modalities

    def public(self) -> dict[str, Any]:
        """The GA session object."""
        fmt = {"type": "audio/pcm", "rate": PCM_RATE}
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": self.id,
            "model": self.model,
            "instructions": self.instructions,
            "output_modalities": list(self.output_modalities),
            "audio": {
                "input": {
                    "format": fmt,
                    "transcription": self.transcription,
                    "turn_detection": None if self.turn_detection is None else self.turn_detection.model_dump(),
                },
                "output": {"format": fmt, "voice": self.voice, "speed": self.speed},
            },
            "tools": [t.model_dump(exclude_none=True) for t in self.tools],
            "tool_choice": self.tool_choice,
            "max_output_tokens": self.max_output_tokens,
        }


def _format(value: Any, param: str) -> str:
    """A GA format object ({type, rate}) or a beta format name → "audio/pcm", or a refusal."""
    if not isinstance(value, dict | str):
        raise ProtocolError(f"{param} must be a format object ({{type, rate}}) or a format name", param=param)
    kind = value.get("type") if isinstance(value, dict) else _BETA_FORMATS.get(value, value)
    rate = value.get("rate", PCM_RATE) if isinstance(value, dict) else PCM_RATE
    if kind != "audio/pcm" or rate != PCM_RATE:
        raise ProtocolError(
            f"{param}: only audio/pcm at {PCM_RATE} Hz (24 kHz mono 16-bit little-endian) is supported here",
            code="unsupported_format",
            param=param,
        )
    return "audio/pcm"


# What a session update may hold: the fields applied here, and OpenAI's fields accepted with no effect
# on this server (tracing, noise reduction, reasoning, ...). Anything else is refused by name.
SESSION_FIELDS = frozenset({
    "instructions", "tools", "tool_choice", "temperature", "max_output_tokens", "voice", "speed", "output_modalities",
    "audio", "max_response_output_tokens", "modalities", "input_audio_format", "output_audio_format", "turn_detection",
    "input_audio_transcription",
})
INERT_SESSION_FIELDS = frozenset({
    "type", "model", "id", "object", "expires_at", "include", "prompt", "tracing", "truncation", "reasoning",
    "parallel_tool_calls", "input_audio_noise_reduction", "client_secret",
})
AUDIO_FIELDS = {"input": frozenset({"format", "transcription", "turn_detection", "noise_reduction"}),
                "output": frozenset({"format", "voice", "speed"})}


def _check_fields(session: dict[str, Any], where: str = "session") -> None:
    for key in session:
        if key not in SESSION_FIELDS and key not in INERT_SESSION_FIELDS:
            raise ProtocolError(f"unknown parameter: '{where}.{str(key)[:64]}'", code="unknown_parameter", param=f"{where}.{str(key)[:64]}")
    audio = session.get("audio")
    for side, known in AUDIO_FIELDS.items():
        part = audio.get(side) if isinstance(audio, dict) else None
        for key in part if isinstance(part, dict) else ():
            if key not in known:
                param = f"{where}.audio.{side}.{str(key)[:64]}"
                raise ProtocolError(f"unknown parameter: '{param}'", code="unknown_parameter", param=param)
    for key in audio if isinstance(audio, dict) else ():
        if key not in AUDIO_FIELDS:
            param = f"{where}.audio.{str(key)[:64]}"
            raise ProtocolError(f"unknown parameter: '{param}'", code="unknown_parameter", param=param)


def _updates(session: dict[str, Any], where: str) -> dict[str, Any]:
    """A `session.update`'s session (GA nesting or beta's flat fields) → `Session` field updates."""
    _check_fields(session, where)
    out: dict[str, Any] = {}
    for key in ("instructions", "tools", "tool_choice", "temperature", "max_output_tokens", "voice", "speed"):
        if key in session:
            out[key] = session[key]
    if "max_response_output_tokens" in session:  # beta
        out["max_output_tokens"] = session["max_response_output_tokens"]
    if "output_modalities" in session:
        out["output_modalities"] = session["output_modalities"]
    elif "modalities" in session:  # beta: ["text"] or ["audio", "text"]
        mods = session["modalities"]
        out["output_modalities"] = ["audio"] if isinstance(mods, list) and "audio" in mods else mods
    out.update(_audio_updates(session, where))
    if isinstance(out.get("turn_detection"), dict) and out["turn_detection"].get("type", "server_vad") != "server_vad":
        raise ProtocolError("turn_detection: only server_vad (or null for push-to-talk) is supported", param=f"{where}.audio.input.turn_detection")
    return out


def _audio_updates(session: dict[str, Any], where: str) -> dict[str, Any]:
    """The audio settings of a session update: GA's `audio.input` / `audio.output`, beta's flat names."""
    out: dict[str, Any] = {}
    audio = session.get("audio") or {}
    if not isinstance(audio, dict):
        raise ProtocolError(f"{where}.audio must be an object", param=f"{where}.audio")
    audio_in, audio_out = audio.get("input") or {}, audio.get("output") or {}
    if not isinstance(audio_in, dict) or not isinstance(audio_out, dict):
        raise ProtocolError(f"{where}.audio.input and .output must be objects", param=f"{where}.audio")
    formats = (
        ("input_format", f"{where}.audio.input.format", audio_in.get("format")),
        ("input_format", f"{where}.input_audio_format", session.get("input_audio_format")),
        ("output_format", f"{where}.audio.output.format", audio_out.get("format")),
        ("output_format", f"{where}.output_audio_format", session.get("output_audio_format")),
    )
    for field, where, value in formats:
        if value is not None:
            out[field] = _format(value, where)
    for key in ("voice", "speed"):
        if key in audio_out:
            out[key] = audio_out[key]
    for container, key in ((audio_in, "turn_detection"), (session, "turn_detection"), (audio_in, "transcription"), (session, "input_audio_transcription")):
        if key in container:
            out["transcription" if "transcription" in key else key] = container[key]
    return out


def updated(current: Session, session: Any, where: str = "session") -> Session:
    """`current` with a `session.update`'s settings (or a `response.create`'s overrides: `where`
    "response") applied; `ProtocolError` naming the field if any is invalid."""
    if not isinstance(session, dict):
        raise ProtocolError(f"{where} must be an object", param=where)
    changes = _updates(session, where)
    try:
        return Session.model_validate({**current.model_dump(), **changes})
    except ValidationError as err:
        first = err.errors()[0]
        # a union's branch name ("int", "str", "literal[...]") is not a field
        loc = [str(p) for p in first["loc"] if not (isinstance(p, str) and (p in ("int", "str", "float", "bool") or "[" in p or "-" in p))]
        param = ".".join([where, *loc])
        raise ProtocolError(f"{param}: {first['msg']}", param=param) from err
