"""The chat service: a validated `ChatCompletionRequest` → a decoder stream → OpenAI's shapes.

Checks what only the deployment knows (the model name, the text budget, which modalities and
projectors are configured), sends media to the encoders, hands the conversation to the decoder and
turns its events into a `ChatCompletion` or `ChatCompletionChunk` payloads. Raises `ServiceError`s;
the HTTP layer maps them and writes the payloads as server-sent events. Handles are injected, so a
fake decoder tests it without Ray.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fusion.registry import FusionMode, ModalitySpec
from modalities.errors import InputError
from modalities.llm.params import SamplingParams
from serve.config import ChorusConfig
from serve.deployments.contracts import DecodeEvent, DecodeRequest
from serve.errors import DeadlineExceeded, Internal, InvalidRequest, ServiceError, from_input_error, model_not_found
from serve.policy import Policy, StreamGuard
from serve.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    Delta,
    ResponseMessage,
    TextPart,
    Usage,
    new_completion_id,
    now,
)
from serve.protocol.chat import ChoiceLogprobs
from serve.redact import RedactingFilter

from .chunking import ChunkMaker, Counts, record_timing
from .explanations import with_boxes
from .fetch import RemoteMediaFetcher
from .media import EncodedMedia, MediaInput, encode_all, extract, with_texts
from .rails import RefusalStream, audit_codes, flag_dicts, untrusted_parts, with_handoff, with_system_prompt
from .structured import AnswerReader, constraint_for, render_conversation

log = logging.getLogger("ray.serve.chorus.chat")
log.addFilter(RedactingFilter())  # a traceback may quote a prompt
DONE = "[DONE]"


@dataclass
class Generation:
    """A decoder call in flight: its events, how to cancel it, and what the answer is labelled with."""

    events: Any  # async iterator of `DecodeEvent` (Serve's streaming response)
    cancel: Callable[[], None]
    decoder_called: float  # perf_counter() when the decoder was called
    completion_id: str = field(default_factory=new_completion_id)
    created: int = field(default_factory=now)
    tools: bool = False  # the answer may be tool calls: read it with an `AnswerReader`
    chorus: dict[str, Any] | None = None  # the response's `chorus` extension (media text), if asked for
    media_read: dict[str, str] = field(default_factory=dict)  # media sha256 → the text its encoder read
    audit: dict[str, Any] = field(default_factory=dict)  # for the audit row: tokens, policy flags (never content)
    guard: Policy | None = None  # the policy whose output rail reads the answer
    cancelled: bool = False  # cancelled by us (client gone, a cancel or delete, the output rail)
    media_details: dict[int, dict[str, Any]] = field(default_factory=dict)  # encoders' detail, for explanations' boxes

    def __post_init__(self) -> None:
        stop = self.cancel

        def cancel() -> None:
            self.cancelled = True
            stop()

        self.cancel = cancel


class ChatService:
    def __init__(
        self,
        config: ChorusConfig,
        encoders: Mapping[str, Any],
        decoder: Any,
        fetcher: RemoteMediaFetcher | None = None,
    ) -> None:
        self.config = config
        self.encoders = dict(encoders)  # modality kind → encoder deployment handle
        self.decoder = decoder
        self.fetcher = fetcher
        self.policy = Policy(config.policy) if config.policy is not None else None
        self._decoder_info: dict[str, Any] | None = None
        self._info_lock = asyncio.Lock()

    async def decoder_info(self) -> dict[str, Any]:
        """The decoder's configuration (projectors, context window), fetched once."""
        if self._decoder_info is None:
            async with self._info_lock:
                if self._decoder_info is None:
                    self._decoder_info = await self.decoder.info.remote()
        return self._decoder_info

    # --- checks ---------------------------------------------------------------------------------

    def _check_request(self, req: ChatCompletionRequest) -> None:
        if req.model != self.config.served_model_name:
            raise model_not_found(req.model)
        text_chars = sum(len(p.text) for m in req.messages for p in m.parts() if isinstance(p, TextPart))
        text_chars += sum(len(s) for s in req.stop or [])
        # Tools and past calls become prompt text too (the tools' JSON lines, the calls' arguments).
        text_chars += sum(len(t.model_dump_json(exclude_none=True)) for t in req.tools or [])
        text_chars += sum(len(c.function.arguments) for m in req.messages for c in m.tool_calls or [])
        limit = self.config.limits.max_text_chars
        if text_chars > limit:
            raise InvalidRequest(
                f"the request holds {text_chars} characters of text; this deployment accepts at most {limit}",
                param="messages",
                code="text_too_long",
            )

    def modes(self, req: ChatCompletionRequest) -> dict[str, FusionMode]:
        """The fusion mode per modality: the config's, with the request's `chorus.fusion` over it. A
        mode is audio's, as it always was (`embed`, `transcript`, `both`), except `ocr`, which only
        images have; an object sets modes per kind."""
        enabled = {media.kind: media for media in self.config.enabled_modalities()}
        modes = {kind: self.config.fusion.mode(media) for kind, media in enabled.items()}
        chosen = req.chorus.fusion if req.chorus else None
        alone = isinstance(chosen, str)
        if isinstance(chosen, str):
            chosen = {"image" if chosen == "ocr" else "audio": chosen}
        for kind, mode in (chosen or {}).items():
            media = enabled.get(kind)
            if media is None:
                continue  # a kind this deployment does not take: its items are refused by name
            if mode not in media.modes:
                param = "chorus.fusion" if alone else f"chorus.fusion.{kind}"
                raise InvalidRequest(f"{kind} takes fusion modes {', '.join(media.modes)}; got '{mode}'", param=param, code="invalid_value")
            modes[kind] = mode
        return modes

    def _check_media(self, item: MediaInput, modes: Mapping[str, FusionMode], info: dict[str, Any]) -> None:
        """Refuse an item this deployment cannot take: no encoder, or no projector for its mode."""
        media: ModalitySpec = item.spec
        if media.kind not in self.encoders:
            raise InvalidRequest(media.not_configured, param=item.param, code=f"{media.config_field}_not_configured")
        mode = modes[media.kind]
        has_projector = media.kind in info.get("projectors", []) or info.get("random_projectors")
        if not media.wants_features(mode) or has_projector:
            return
        others = [m for m in media.modes if not media.wants_features(m)]
        if not others:  # no other mode to suggest
            raise InvalidRequest(
                f"no {media.kind} projector is configured",
                param=item.param,
                code=f"{media.config_field}_not_configured",
            )
        raise InvalidRequest(
            f"fusion mode '{mode}' needs an {media.kind} projector, and none is configured; use "
            f"chorus.fusion='{others[0]}'",
            param="chorus.fusion",
            code="fusion_unavailable",
        )

    def _params(self, req: ChatCompletionRequest, info: dict[str, Any]) -> SamplingParams:
        """The request's sampling; fields it leaves out get the decoder's served defaults
        (`llm.default_sampling` over the model's generation_config), then OpenAI's."""
        defaults = info.get("default_sampling") or {}

        def pick(value: float | None, name: str, fallback: float) -> float:
            return value if value is not None else defaults.get(name, fallback)

        try:
            return SamplingParams(
                max_tokens=req.requested_max_tokens() or self.config.limits.default_max_tokens,
                temperature=pick(req.temperature, "temperature", 1.0),
                top_p=pick(req.top_p, "top_p", 1.0),
                seed=req.seed,
                stop=req.stop or [],
                presence_penalty=pick(req.presence_penalty, "presence_penalty", 0.0),
                frequency_penalty=pick(req.frequency_penalty, "frequency_penalty", 0.0),
                logit_bias=tuple((int(token), bias) for token, bias in (req.logit_bias or {}).items()),
                logprobs=bool(req.logprobs),
                top_logprobs=req.top_logprobs or 0,
                constraint=constraint_for(req),
            )
        except InputError as err:
            raise from_input_error(err) from err
        except ValueError as err:
            raise InvalidRequest(str(err)[:300], code="invalid_value") from err

    # --- the decoder call -------------------------------------------------------------------------

    async def start(self, req: ChatCompletionRequest, fresh_from: int = 0) -> Generation:
        """Check the request, encode its media, and call the decoder (its stream not read yet).
        Messages before `fresh_from` are stored history (a Responses turn's context): the policy's
        input rail has seen them already."""
        self._check_request(req)
        policy = self.policy
        if policy is not None:
            req = with_handoff(req, policy)
        info = await self.decoder_info()
        modes = self.modes(req)
        params = self._params(req, info)
        messages, media = await extract(req, self.fetcher, self.config.limits.max_media_items)
        messages = render_conversation(messages, req)
        if policy is not None:
            messages = with_system_prompt(messages, policy)
        for item in media:
            self._check_media(item, modes, info)
        encoded = await encode_all(media, modes, self.encoders)
        chorus = {"media": media_text(media, modes, encoded)} if req.chorus and req.chorus.return_media_text else None
        read = {sha256(item.data): encoded.texts[item.index] for item in media if item.index in encoded.texts}
        flags = policy.scan_input(untrusted_parts(req, fresh_from, media, encoded)) if policy is not None else []
        if flags:
            chorus = {**(chorus or {}), "policy": {"flags": flag_dicts(flags), "refused": policy.refuses(flags)}}
        audit = {"flags": audit_codes(flags)}
        if policy is not None and policy.refuses(flags):  # the refusal, no decoder call
            refusal = RefusalStream(policy.refusal)
            return Generation(
                events=refusal, cancel=refusal.cancel, decoder_called=time.perf_counter(), chorus=chorus, media_read=read,
                audit=audit, guard=None,
            )
        decode = DecodeRequest(
            messages=with_texts(messages, encoded),
            modes=modes,
            params=params,
            media=encoded.features,
            requested_max_tokens=req.requested_max_tokens(),
            explain=bool(req.chorus and req.chorus.explain),
        )
        # A request without media features (text, transcripts) goes to the decoder over Serve's
        # gRPC channel between replicas, its tokens stream back the same way: the round trip
        # before the first token 5.0 → 2.7 ms against Ray's actor calls, the default
        # (docs/benchmarks.md). Features (up to megabytes) keep the object store, which the
        # replicas' 4 MiB gRPC message limit doesn't bound.
        called = time.perf_counter()
        events = self.decoder.options(stream=True, _by_reference=bool(encoded.features)).generate.remote(decode)
        return Generation(
            events=events, cancel=events.cancel, decoder_called=called, tools=req.tools_in_use(), chorus=chorus,
            media_read=read, audit=audit, guard=policy, media_details=dict(encoded.details),
        )

    async def first_event(self, generation: Generation) -> tuple[DecodeEvent | None, AsyncIterator[DecodeEvent]]:
        """(first event or None, the events from the first on). The first is awaited here, so a
        refusal by the decoder (a prompt over the context) raises before any response is started."""
        iterator = generation.events.__aiter__()
        try:
            first = await iterator.__anext__()
        except StopAsyncIteration:
            first = None
        except InputError as err:
            raise from_input_error(err) from err

        async def chained() -> AsyncIterator[DecodeEvent]:
            if first is None:
                return
            yield first
            async for event in iterator:
                yield event

        return first, chained()

    # --- answers ------------------------------------------------------------------------------------

    async def complete(self, generation: Generation, started: float) -> dict[str, Any]:
        """The whole answer as a `ChatCompletion` payload."""
        _first, events = await self.first_event(generation)
        text: list[str] = []
        logprobs: list[dict[str, Any]] | None = None
        finish, prompt_tokens, completion_tokens = "stop", 0, 0
        first_at = None
        async for event in events:
            first_at = first_at or time.perf_counter()
            text.append(event.text)
            if event.logprobs is not None:
                logprobs = (logprobs or []) + event.logprobs
            prompt_tokens, completion_tokens = event.prompt_tokens, event.completion_tokens
            finish = event.finish_reason or finish
            _explained(generation, event)
        record_timing(started, first_at, completion_tokens)
        generation.audit.update(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens)
        message = ResponseMessage(content="".join(text))
        if generation.tools:  # read as the stream reads it: a call cut inside its header is no text
            reader = AnswerReader()
            released, _ = reader.push(message.content)
            more, _ = reader.finish()
            message = ResponseMessage(content=released + more)
            if reader.ids:
                message = ResponseMessage(content=None, tool_calls=reader.tool_calls())
                finish = "tool_calls" if finish == "stop" else finish
        if generation.guard is not None and message.content:
            verdict = generation.guard.check_output(message.content)
            if not verdict.ok:
                message, finish = ResponseMessage(content=generation.guard.refusal), "content_filter"
                _note_output_rail(generation, verdict.code)
        choice = Choice(
            message=message,
            finish_reason=finish,  # type: ignore[arg-type]
            logprobs=None if logprobs is None else ChoiceLogprobs(content=logprobs),
        )
        model = self.config.served_model_name
        completion = ChatCompletion(
            id=generation.completion_id,
            created=generation.created,
            model=model,
            choices=[choice],
            usage=usage,
            chorus=generation.chorus,
        )
        payload = completion.model_dump()
        if generation.chorus is None:
            payload.pop("chorus")
        return payload

    async def chunks(
        self,
        generation: Generation,
        events: AsyncIterator[DecodeEvent],
        include_usage: bool,
        started: float,
        deadline: float | None = None,
        request_id: str = "-",
    ) -> AsyncIterator[list[dict[str, Any] | str]]:
        """The answer as `ChatCompletionChunk` payloads, grouped per write, ending with `[DONE]`.

        The role chunk leaves with the first content chunk (one write, one hop through Serve's proxy
        fewer before the first token reaches the client). A failure mid-stream ends it with an error
        payload, never silently truncated; a passed deadline cancels the generation.
        """
        chunk = ChunkMaker(generation, self.config.served_model_name, include_usage)
        pending: list[dict[str, Any] | str] = [chunk(Delta(role="assistant", content=""))]
        if generation.chorus is not None:  # what was read from the media leaves with the first chunk
            pending[0]["chorus"] = generation.chorus
        counts = Counts()
        reader = AnswerReader() if generation.tools else None
        guard = generation.guard.stream_guard() if generation.guard is not None else None
        logprobs: list[dict[str, Any]] | None = None  # of tokens whose text is not out yet
        explained = None
        try:
            async for event in events:
                counts.see(event)
                explained = _explained(generation, event) or explained
                if event.logprobs is not None:
                    logprobs = (logprobs or []) + event.logprobs
                out = _deltas(reader, event.text, final=bool(event.finish_reason))
                if guard is not None:
                    out = _guarded(guard, out, final=bool(event.finish_reason))
                    if guard.tripped is not None:  # what is out stays out; the rest is the refusal
                        generation.cancel()
                        _note_output_rail(generation, guard.tripped.code)
                        counts.finish = "content_filter"
                        refusal = chunk(Delta(content=generation.guard.refusal), logprobs=logprobs)
                        refusal["chorus"] = generation.chorus
                        yield [*pending, *(chunk(delta) for delta in out), refusal]
                        pending, logprobs = [], None
                        break
                if out:
                    yield [*pending, *(chunk(delta, logprobs=logprobs) for delta in out)]
                    pending, logprobs = [], None
                if event.finish_reason:
                    counts.finish = event.finish_reason
                    if reader is not None and reader.ids and counts.finish == "stop":
                        counts.finish = "tool_calls"
                elif deadline is not None and time.monotonic() > deadline:
                    raise DeadlineExceeded("the request did not complete in time", code="timeout")
        except DeadlineExceeded as err:
            generation.cancel()  # frees the decoder slot
            yield [*pending, err.body(), DONE]
            return
        except Exception as err:
            if generation.cancelled:  # the decoder call ends because we asked it to: not a failure
                yield [*pending, DONE]
                return
            log.exception("stream failed request_id=%s", request_id)
            failure: ServiceError = (
                from_input_error(err) if isinstance(err, InputError) else Internal(f"internal error (request id {request_id})")
            )
            yield [*pending, failure.body(), DONE]
            return
        record_timing(started, counts.first_at, counts.completion_tokens)
        generation.audit.update(prompt_tokens=counts.prompt_tokens, completion_tokens=counts.completion_tokens)
        closing = [*pending, chunk(Delta(), finish=counts.finish, logprobs=logprobs)]  # EOS's entry, held text's
        if include_usage:
            closing.append(chunk(Delta(), usage=counts.usage(), empty=True))
        if explained is not None:  # the explanation: a last chunk of its own, before [DONE]
            closing.append({**chunk(Delta(), empty=True), "chorus": {"explanation": explained}})
        yield [*closing, DONE]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def media_text(media: list[MediaInput], modes: Mapping[str, FusionMode], encoded: EncodedMedia) -> list[dict[str, Any]]:
    """`chorus.media`: per media item, what its encoder read (OCR lines and boxes, a document's
    pages, a transcript), in request order; items whose mode reads no text have only their place."""
    out = []
    for item in media:
        entry: dict[str, Any] = {"index": item.index, "kind": item.spec.kind, "param": item.param, "mode": modes[item.spec.kind]}
        if item.index in encoded.texts:
            entry["text"] = encoded.texts[item.index]
        entry.update(encoded.details.get(item.index, {}))
        out.append(entry)
    return out


def _guarded(guard: StreamGuard, deltas: list[Delta], final: bool) -> list[Delta]:
    """`deltas` through the output rail: text held back until it cannot be the start of a forbidden
    phrase or a secret; nothing more once the guard has tripped. Tool-call deltas pass."""
    out: list[Delta] = []
    for delta in deltas:
        if delta.content:
            released = guard.push(delta.content)
            if guard.tripped is not None:
                return out
            if released:
                out.append(Delta(content=released))
        if delta.tool_calls:
            out.append(Delta(tool_calls=delta.tool_calls))
    if final:
        tail = guard.finish()
        if guard.tripped is None and tail:
            out.append(Delta(content=tail))
    return out


def _explained(generation: Generation, event: DecodeEvent) -> dict[str, Any] | None:
    """The event's explanation with its boxes, also kept in the answer's `chorus` (None if it has none)."""
    if event.explanation is None:
        return None
    explanation = with_boxes(event.explanation, generation.media_details)
    generation.chorus = {**(generation.chorus or {}), "explanation": explanation}
    return explanation


def _note_output_rail(generation: Generation, code: str | None) -> None:
    """The answer was replaced by the refusal: say so in `chorus.policy` and the audit row."""
    chorus = generation.chorus or {}
    generation.chorus = {**chorus, "policy": {**chorus.get("policy", {}), "output": {"replaced": True, "code": code}}}
    generation.audit["flags"] = [*generation.audit.get("flags", []), f"output_rail:{code}"]


def _deltas(reader: AnswerReader | None, text: str, final: bool) -> list[Delta]:
    """The chunk deltas one decoder event makes: its text, or (tools) released text and call deltas."""
    if reader is None:
        return [Delta(content=text)] if text else []
    released, calls = reader.push(text)
    if final:
        more_text, more_calls = reader.finish()
        released, calls = released + more_text, calls + more_calls
    deltas = [Delta(content=released)] if released else []
    return deltas + ([Delta(tool_calls=calls)] if calls else [])
