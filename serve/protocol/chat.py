"""Chat Completions: OpenAI's request, response and chunk shapes (pydantic), in OpenAI's field order.

Requests validate themselves at the boundary; anything outside what we serve is refused with a
precise message (`extra="forbid"`), never silently ignored. Our own extensions live under the one
`chorus` key.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from fusion.registry import FusionMode
from modalities.llm.params import MAX_LOGIT_BIAS, MAX_STOP_SEQUENCES, MAX_TOP_LOGPROBS, PENALTY_RANGE, SEED_RANGE

from .common import Strict as _Strict
from .common import refuse

AudioFormat = Literal["wav", "mp3", "flac", "ogg"]
MAX_TOKENS_LIMIT = 2**31 - 1  # a 32-bit count; the context window refuses far fewer
MAX_TOOLS = 128  # OpenAI's limit
MAX_SCHEMA_CHARS = 100_000  # one tool's parameters or one response schema, as JSON text
MAX_CHOICES = 256  # chorus.choice options
MAX_PATTERN_CHARS = 10_000  # chorus.regex / chorus.grammar
FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function and schema names


# --- content parts ---------------------------------------------------------------------------


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: str = Field(description="A data: URL (data:image/png;base64,...); remote URLs are off by default")
    detail: Literal["auto", "low", "high"] = "auto"


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(_Strict):
    data: str = Field(description="Base64-encoded audio bytes")
    format: AudioFormat


class AudioPart(_Strict):
    type: Literal["input_audio"]
    input_audio: InputAudio


class InputFile(_Strict):
    file_data: str | None = Field(
        default=None, description="The document as a base64 data URL (data:application/pdf;base64,...)"
    )
    filename: str | None = Field(default=None, max_length=255)
    file_id: str | None = Field(default=None, max_length=256, description="Not supported here (no Files API): send file_data")


class FilePart(_Strict):
    type: Literal["file"]
    file: InputFile


ContentPart = Annotated[TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")]
MediaPart = ImagePart | AudioPart | FilePart


class FunctionCall(_Strict):
    name: str = Field(pattern=FUNCTION_NAME)
    arguments: str = Field(description="The arguments as JSON text")


class ToolCall(_Strict):
    id: str = Field(max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class AudioRef(_Strict):
    """An earlier spoken answer, named by its `message.audio.id` (stands for what it said)."""

    id: str = Field(min_length=1, max_length=128)


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_call_id: str | None = Field(default=None, max_length=256)
    audio: AudioRef | None = None

    @model_validator(mode="after")
    def _content_rules(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if (self.tool_call_id is None) != (self.role != "tool"):
            raise ValueError("tool messages need a tool_call_id, and only they carry one")
        if self.audio is not None and self.role != "assistant":
            raise ValueError("only assistant messages carry audio (an earlier spoken answer's id)")
        if self.content is None and not self.tool_calls and self.audio is None:
            raise ValueError("message content is required")
        if isinstance(self.content, list) and self.role != "user":
            media = [p for p in self.content if not isinstance(p, TextPart)]
            if media:
                raise ValueError(f"'{self.role}' messages may only contain text parts; media goes in user messages")
        return self

    def parts(self) -> list[TextPart | MediaPart]:
        """Content as a list of parts (a plain string becomes one text part)."""
        if isinstance(self.content, str):
            return [TextPart(type="text", text=self.content)]
        return list(self.content or [])


ChatAudioFormat = Literal["wav", "mp3", "flac", "opus", "pcm16", "aac"]


class ChatAudioParams(_Strict):
    """`audio` of a request with `modalities: ["text", "audio"]`: how the answer is spoken."""

    voice: str = Field(min_length=1, max_length=64)
    format: ChatAudioFormat


class StreamOptions(_Strict):
    include_usage: bool = False


def _check_schema(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    if schema is not None and len(json.dumps(schema)) > MAX_SCHEMA_CHARS:
        raise ValueError(f"the schema is over {MAX_SCHEMA_CHARS} characters as JSON")
    return schema


# A JSON Schema a client sends (tool parameters, a response schema): at most MAX_SCHEMA_CHARS as JSON.
ClientSchema = Annotated[dict[str, Any] | None, AfterValidator(_check_schema)]


class FunctionDefinition(_Strict):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = Field(default=None, max_length=MAX_SCHEMA_CHARS)
    parameters: ClientSchema = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class JSONSchema(_Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    schema_: ClientSchema = Field(default=None, alias="schema")
    strict: bool | None = None


class TextFormat(_Strict):
    type: Literal["text"]


class JSONObjectFormat(_Strict):
    type: Literal["json_object"]


class JSONSchemaFormat(_Strict):
    type: Literal["json_schema"]
    json_schema: JSONSchema


ResponseFormat = Annotated[TextFormat | JSONObjectFormat | JSONSchemaFormat, Field(discriminator="type")]


class ChorusOptions(_Strict):
    """Chorus extensions, fenced under the request's `chorus` key."""

    fusion: FusionMode | dict[Literal["audio", "image"], FusionMode] | None = Field(
        default=None,
        description="How media reach the LLM. A mode alone is audio's (embed | transcript | both), except 'ocr', "
        "which is images'; an object sets it per kind (images: ocr | embed | both), e.g. "
        '{"audio": "transcript", "image": "embed"}',
    )
    return_media_text: bool = Field(
        default=False,
        description="Return what was read from each media item (OCR lines with boxes and confidences, a "
        "document's pages, a clip's transcript) in the response's `chorus.media`",
    )
    explain: bool = Field(
        default=False,
        description="Return what the answer rested on in `chorus.explanation`: each input kind's attention share "
        "and ablation delta, and per-segment relevance (one extra batched forward pass; docs/explanations.md)",
    )
    regex: str | None = Field(default=None, max_length=MAX_PATTERN_CHARS, description="The answer matches this regex")
    choice: list[str] | None = Field(
        default=None, min_length=1, max_length=MAX_CHOICES, description="The answer is exactly one of these strings"
    )
    grammar: str | None = Field(
        default=None, max_length=MAX_PATTERN_CHARS, description="The answer follows this Lark grammar (llguidance's dialect)"
    )

    def constraints(self) -> list[str]:
        """The constraint fields set (at most one may be)."""
        return [f"chorus.{name}" for name in ("regex", "choice", "grammar") if getattr(self, name) is not None]


class ChatCompletionRequest(_Strict):
    messages: list[ChatMessage] = Field(min_length=1)
    model: str
    audio: ChatAudioParams | None = None
    frequency_penalty: float | None = Field(default=None, ge=PENALTY_RANGE[0], le=PENALTY_RANGE[1])
    logit_bias: dict[str, float] | None = Field(default=None, max_length=MAX_LOGIT_BIAS)
    logprobs: bool | None = None
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    modalities: list[Literal["text", "audio"]] | None = Field(default=None, min_length=1, max_length=2)
    n: int | None = None
    parallel_tool_calls: bool | None = None
    presence_penalty: float | None = Field(default=None, ge=PENALTY_RANGE[0], le=PENALTY_RANGE[1])
    response_format: ResponseFormat | None = None
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])  # torch.Generator: 64 bits
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    tools: list[Tool] | None = Field(default=None, min_length=1, max_length=MAX_TOOLS)  # [] refused, as OpenAI
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    user: str | None = None
    chorus: ChorusOptions | None = None

    @field_validator("temperature", "top_p", "frequency_penalty", "presence_penalty")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("n")
    @classmethod
    def _single_choice(cls, value: int | None) -> int | None:
        if value is not None and value != 1:
            raise ValueError("only n=1 is supported")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not key.isdigit() or len(key) > 10:
                raise ValueError("logit_bias keys are token ids (decimal integers)")
            if not math.isfinite(bias) or not -100 <= bias <= 100:
                raise ValueError("logit_bias values must be in [-100, 100]")
        return value

    @model_validator(mode="after")
    def _tools_and_formats(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise refuse("top_logprobs needs logprobs: true", "top_logprobs")
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise refuse("tool names must be unique", "tools")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            missing = self.tool_choice.function.name[:64]
            raise refuse(f"tool_choice names a function that is not in tools: {missing!r}", "tool_choice")
        if self.tool_choice in ("auto", "required") and not names:
            raise refuse(f"tool_choice '{self.tool_choice}' needs tools", "tool_choice")
        if self.spoken() and self.audio is None:
            raise refuse("modalities with 'audio' needs the audio parameter ({voice, format})", "audio")
        if self.audio is not None and not self.spoken():
            raise refuse("audio is only used with modalities: ['text', 'audio']", "modalities")
        if self.modalities is not None and "text" not in self.modalities:
            raise refuse("modalities must include 'text' (audio comes with its transcript)", "modalities")
        return self

    def spoken(self) -> bool:
        """Whether the answer is to be spoken too (`modalities` includes audio)."""
        return bool(self.modalities) and "audio" in self.modalities

    def tools_in_use(self) -> bool:
        """Whether the model is offered the tools (`tool_choice: none` hides them, as vLLM can)."""
        return bool(self.tools) and self.tool_choice != "none"

    def constraint_fields(self) -> list[str]:
        """The request fields that ask for a constrained answer (at most one may be set)."""
        fields = ["tools"] if self.tools_in_use() else []
        if self.response_format is not None and self.response_format.type != "text":
            fields.append("response_format")
        return fields + (self.chorus.constraints() if self.chorus else [])

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must be non-empty")
        return stops

    def requested_max_tokens(self) -> int | None:
        """`max_completion_tokens` wins over the deprecated `max_tokens`, as in OpenAI's API."""
        return self.max_completion_tokens or self.max_tokens


# --- responses -------------------------------------------------------------------------------


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def new_tool_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]  # content_filter: the policy's output rail


class ResponseFunctionCall(BaseModel):
    name: str
    arguments: str


class ResponseToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ResponseFunctionCall


class ResponseAudio(BaseModel):
    id: str
    data: str  # base64 of the audio in the request's format
    expires_at: int  # Unix seconds: until then a follow-up may send back {"audio": {"id": ...}}
    transcript: str


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ResponseToolCall] | None = None
    audio: ResponseAudio | None = None


class ChoiceLogprobs(BaseModel):
    content: list[dict[str, Any]] | None


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    chorus: dict[str, Any] | None = None  # extensions (`chorus.media` with return_media_text); left out when None


class DeltaFunctionCall(BaseModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
