"""OpenAI's shapes as pydantic models, one module per API: chat, transcription, models, errors;
`parse` turns a body into one of them (import it as `serve.protocol.parse`)."""

from .chat import (
    AudioPart,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    ChorusOptions,
    ChunkChoice,
    Delta,
    DeltaFunctionCall,
    DeltaToolCall,
    FilePart,
    ImagePart,
    MediaPart,
    NamedToolChoice,
    ResponseFunctionCall,
    ResponseMessage,
    ResponseToolCall,
    TextPart,
    Usage,
    new_completion_id,
    new_tool_call_id,
)
from .common import now
from .errors import ErrorDetail, ErrorResponse
from .models import ModelCard, ModelList
from .transcription import TRANSCRIPTION_FORMATS

__all__ = [
    "AudioPart",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatMessage",
    "Choice",
    "ChorusOptions",
    "ChunkChoice",
    "Delta",
    "FilePart",
    "MediaPart",
    "DeltaFunctionCall",
    "DeltaToolCall",
    "ErrorDetail",
    "ErrorResponse",
    "ImagePart",
    "NamedToolChoice",
    "ModelCard",
    "ModelList",
    "ResponseFunctionCall",
    "ResponseMessage",
    "ResponseToolCall",
    "TRANSCRIPTION_FORMATS",
    "TextPart",
    "Usage",
    "new_completion_id",
    "new_tool_call_id",
    "now",
]
