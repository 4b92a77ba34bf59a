"""The Responses and Conversations APIs: OpenAI's request shapes (pydantic), in OpenAI's field order.

Input items arrive as OpenAI's Python client sends them: a string, or a list of messages (the `type`
may be left out), `function_call` and `function_call_output` items. Content parts are `input_text`,
`input_image`, `input_file` and `input_audio` (assistant turns: `output_text`, `refusal`). Fields a
client may send that change nothing here (`include`, `truncation`, `user`, ...) are accepted; fields
asking for what this service does not do (`background`, hosted tools) are refused by name.
"""

from __future__ import annotations

import math
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from modalities.llm.params import SEED_RANGE

from .chat import FUNCTION_NAME, MAX_TOKENS_LIMIT, MAX_TOOLS, AudioFormat, ChorusOptions, ClientSchema
from .common import Strict, refuse

MAX_METADATA_PAIRS = 16  # OpenAI's limits on `metadata`
MAX_METADATA_KEY, MAX_METADATA_VALUE = 64, 512
MAX_CONVERSATION_ITEMS = 20  # items a conversation may be created with, or added in one call
MAX_INPUT_ITEMS = 1000
MAX_ID = 256


def new_id(prefix: str) -> str:
    """OpenAI-style ids: `resp_…`, `msg_…`, `fc_…`, `conv_…`."""
    return f"{prefix}_{uuid.uuid4().hex}"


def _check_metadata(value: dict[str, str] | None) -> dict[str, str] | None:
    if value is None:
        return None
    if len(value) > MAX_METADATA_PAIRS:
        raise ValueError(f"metadata holds at most {MAX_METADATA_PAIRS} key-value pairs")
    for key, item in value.items():
        if len(key) > MAX_METADATA_KEY:
            raise ValueError(f"metadata keys are at most {MAX_METADATA_KEY} characters")
        if len(item) > MAX_METADATA_VALUE:
            raise ValueError(f"metadata values are at most {MAX_METADATA_VALUE} characters")
    return value


Metadata = Annotated[dict[str, str], AfterValidator(_check_metadata)]  # up to 16 string pairs


# --- content parts -----------------------------------------------------------------------------


class InputTextPart(Strict):
    type: Literal["input_text"]
    text: str


class InputImagePart(Strict):
    type: Literal["input_image"]
    image_url: str | None = Field(default=None, description="A data: URL; remote URLs are off by default")
    file_id: str | None = Field(default=None, max_length=MAX_ID, description="Not supported (no Files API)")
    detail: Literal["auto", "low", "high"] = "auto"


class InputFilePart(Strict):
    type: Literal["input_file"]
    file_data: str | None = Field(default=None, description="The document as a base64 data URL")
    file_id: str | None = Field(default=None, max_length=MAX_ID)
    file_url: str | None = Field(default=None, max_length=4096, description="Not supported: send file_data")
    filename: str | None = Field(default=None, max_length=255)


class ResponseInputAudio(Strict):
    data: str = Field(description="Base64-encoded audio bytes")
    format: AudioFormat


class InputAudioPart(Strict):
    type: Literal["input_audio"]
    input_audio: ResponseInputAudio


class OutputText(BaseModel):
    """An assistant's text, as a client sends a past answer back (annotations and logprobs pass)."""

    model_config = ConfigDict(extra="allow")
    type: Literal["output_text"]
    text: str


class Refusal(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["refusal"]
    refusal: str


InputPart = Annotated[InputTextPart | InputImagePart | InputFilePart | InputAudioPart, Field(discriminator="type")]
AssistantPart = Annotated[OutputText | Refusal | InputTextPart, Field(discriminator="type")]


# --- input items -------------------------------------------------------------------------------


class MessageItem(Strict):
    type: Literal["message"] = "message"
    id: str | None = Field(default=None, max_length=MAX_ID)
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[InputPart | AssistantPart]

    @model_validator(mode="after")
    def _parts_fit_role(self) -> MessageItem:
        if isinstance(self.content, str):
            return self
        for part in self.content:
            media = not isinstance(part, InputTextPart | OutputText | Refusal)
            if media and self.role != "user":
                raise ValueError(f"'{self.role}' messages may only contain text parts; media goes in user messages")
            if isinstance(part, OutputText | Refusal) and self.role != "assistant":
                raise ValueError(f"'{part.type}' parts belong to assistant messages")
        return self


class FunctionCallItem(Strict):
    type: Literal["function_call"]
    id: str | None = Field(default=None, max_length=MAX_ID)
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    call_id: str = Field(min_length=1, max_length=MAX_ID)
    name: str = Field(pattern=FUNCTION_NAME)
    arguments: str = Field(description="The arguments as JSON text")


class FunctionCallOutputItem(Strict):
    type: Literal["function_call_output"]
    id: str | None = Field(default=None, max_length=MAX_ID)
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    call_id: str = Field(min_length=1, max_length=MAX_ID)
    output: str | list[InputTextPart] = Field(description="The tool's result (text)")

    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "".join(p.text for p in self.output)


def _item_type(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("type", "message")
    return getattr(value, "type", "message")


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")],
    Discriminator(_item_type, custom_error_type="invalid_item", custom_error_message="unknown input item type"),
]


# --- tools and formats -------------------------------------------------------------------------


class FunctionTool(Strict):
    type: Literal["function"]
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = Field(default=None, max_length=100_000)
    parameters: ClientSchema = None
    strict: bool | None = None


class FunctionChoice(Strict):
    type: Literal["function"]
    name: str = Field(pattern=FUNCTION_NAME)


class TextFormatText(Strict):
    type: Literal["text"]


class TextFormatJSONObject(Strict):
    type: Literal["json_object"]


class TextFormatJSONSchema(Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: Literal["json_schema"]
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    schema_: ClientSchema = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(Strict):
    format: Annotated[TextFormatText | TextFormatJSONObject | TextFormatJSONSchema, Field(discriminator="type")] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ConversationRef(Strict):
    id: str = Field(min_length=1, max_length=MAX_ID)


class ResponseCreateRequest(Strict):
    model: str
    input: str | list[InputItem] = Field(description="Text, or a list of input items")
    instructions: str | None = None
    tools: list[FunctionTool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    stream: bool | None = False
    store: bool | None = True
    previous_response_id: str | None = Field(default=None, max_length=MAX_ID)
    conversation: Annotated[str, Field(min_length=1, max_length=MAX_ID)] | ConversationRef | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    metadata: Metadata | None = None
    background: bool | None = None
    include: list[str] | None = Field(default=None, max_length=32, description="Accepted; nothing extra is included")
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = Field(default=None, max_length=MAX_ID)
    safety_identifier: str | None = Field(default=None, max_length=MAX_ID)
    prompt_cache_key: str | None = Field(default=None, max_length=MAX_ID)
    service_tier: str | None = Field(default=None, max_length=32)
    chorus: ChorusOptions | None = None

    @field_validator("temperature", "top_p")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("input")
    @classmethod
    def _input_size(cls, value: str | list[Any]) -> str | list[Any]:
        if isinstance(value, list) and len(value) > MAX_INPUT_ITEMS:
            raise ValueError(f"at most {MAX_INPUT_ITEMS} input items")
        return value

    @model_validator(mode="after")
    def _rules(self) -> ResponseCreateRequest:
        if self.previous_response_id is not None and self.conversation is not None:
            raise refuse("previous_response_id cannot be used together with conversation", "previous_response_id")
        if self.background:
            raise refuse("background responses are not supported here; omit background or set it to false", "background")
        names = [t.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise refuse("tool names must be unique", "tools")
        if isinstance(self.tool_choice, FunctionChoice) and self.tool_choice.name not in names:
            raise refuse(f"tool_choice names a function that is not in tools: {self.tool_choice.name[:64]!r}", "tool_choice")
        if self.tool_choice in ("auto", "required") and not names:
            raise refuse(f"tool_choice '{self.tool_choice}' needs tools", "tool_choice")
        if self.conversation is not None and self.store is False:
            raise refuse("a response in a conversation is stored: conversation needs store to be true", "store")
        return self

    def conversation_id(self) -> str | None:
        if self.conversation is None:
            return None
        return self.conversation if isinstance(self.conversation, str) else self.conversation.id

    def items(self) -> list[MessageItem | FunctionCallItem | FunctionCallOutputItem]:
        """The input as items (a string is one user message)."""
        if isinstance(self.input, str):
            return [MessageItem(role="user", content=self.input)]
        return list(self.input)


# --- conversations -----------------------------------------------------------------------------


class ConversationCreateRequest(Strict):
    items: list[InputItem] | None = Field(default=None, max_length=MAX_CONVERSATION_ITEMS)
    metadata: Metadata | None = None


class ConversationUpdateRequest(Strict):
    metadata: Metadata


class ConversationItemsRequest(Strict):
    items: list[InputItem] = Field(min_length=1, max_length=MAX_CONVERSATION_ITEMS)
