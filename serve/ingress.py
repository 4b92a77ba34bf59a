"""The HTTP API (FastAPI): OpenAI-compatible chat completions, transcriptions, models, health.

`Ingress` is a plain class; `serve/app.py` wraps it with `serve.ingress(app)` and binds the encoder
and decoder handles. The routes validate, fan media out to the encoders concurrently (router.py)
and stream the decoder's tokens back as OpenAI's server-sent events.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable

from fastapi import FastAPI, Request
from ray import serve
from ray.serve.exceptions import BackPressureError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import ValidationError

from modalities.errors import MediaError
from modalities.llm.runtime import SamplingParams

from . import metrics, openapi, router
from .auth import KeyStore, RateLimiter, retry_after_header
from .config import ChorusConfig, LimitsConfig
from .deployments import DecodeRequest
from .errors import SERVER_ERROR, APIError, from_media_error, model_not_found, validation_error
from .fetch import RemoteMediaFetcher
from .protocol import (
    TextPart,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    ModelCard,
    ModelList,
    ResponseMessage,
    Usage,
    new_completion_id,
    now,
)
from .redact import RedactingFilter

# Under `ray.serve` so that Serve's replica log files (with replica and request ids) get the lines;
# everything this logger writes (access lines, tracebacks that may quote a prompt) is PII-redacted.
log = logging.getLogger("ray.serve.chorus.ingress")
log.addFilter(RedactingFilter())
log.setLevel(logging.INFO)
app = FastAPI(title="Chorus", description="Multimodal assistant, OpenAI-compatible API")
HEALTH_TIMEOUT_S = 5.0
OVERLOAD_RETRY_AFTER_S = 2
TRANSCRIPTION_FORMATS = ("json", "text", "verbose_json")


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


_in_flight: dict[str, int] = {}


def _track(route: str, delta: int) -> None:
    """Requests in flight per route at this ingress replica (the queue-depth gauge)."""
    _in_flight[route] = _in_flight.get(route, 0) + delta
    metrics.QUEUE_DEPTH.set(_in_flight[route], tags={"route": route})


async def _tracked_stream(route: str, body: AsyncIterator[bytes], log_access: Callable[[], None]) -> AsyncIterator[bytes]:
    try:
        async for piece in body:
            yield piece
    finally:
        _track(route, -1)
        log_access()


def _overloaded(message: str) -> APIError:
    return APIError(
        503, message, type=SERVER_ERROR, code="overloaded", headers={"Retry-After": str(OVERLOAD_RETRY_AFTER_S)}
    )


async def _respond(
    request: Request,
    route: str,
    handler: Awaitable[Response],
    media_param: str | None,
    limits: LimitsConfig | None = None,
) -> Response:
    """Run a route's handler, map its errors to OpenAI error bodies, count and log the outcome.

    With `limits`: a replica already working on `max_in_flight` requests answers 503 at once, before
    the body is read; a response not started within `request_timeout_s` is a 504.
    """
    started = request.state.started = time.perf_counter()
    if limits is not None and sum(_in_flight.values()) >= limits.max_in_flight:
        handler.close()  # type: ignore[attr-defined]  # the coroutine never runs
        response = _error_response(_overloaded("too many requests in flight at this replica; retry shortly"))
        metrics.REQUESTS.inc(tags={"route": route, "status": "503"})
        metrics.ERRORS.inc(tags={"route": route, "status": "503"})
        log.info("%s %s 503 %.1fms overloaded", request.method, route, (time.perf_counter() - started) * 1000)
        return response
    timeout_s = limits.request_timeout_s if limits is not None else None
    request.state.deadline = None if timeout_s is None else time.monotonic() + timeout_s
    _track(route, +1)
    try:
        response = await asyncio.wait_for(handler, timeout_s)
    except asyncio.TimeoutError:
        response = _error_response(
            APIError(504, f"the request did not complete within {timeout_s:g} s", type=SERVER_ERROR, code="timeout")
        )
    except APIError as err:
        response = _error_response(err)
    except MediaError as err:
        # Media errors name the form field when the route has one (transcriptions: `file`).
        response = _error_response(from_media_error(err, param=media_param))
    except ClientDisconnected:
        # Nobody will read this; 499 (nginx's "client closed request") keeps it out of the 5xx count.
        response = _error_response(APIError(499, "the client closed the connection", code="client_closed_request"))
    except BackPressureError:
        # A deployment's queue is full: say so at once rather than queue without bound.
        response = _error_response(_overloaded("the service is overloaded; retry shortly"))
    except Exception:
        log.exception("%s failed", route)
        response = _error_response(APIError(500, "internal error", type=SERVER_ERROR))
    tags = {"route": route, "status": str(response.status_code)}
    metrics.REQUESTS.inc(tags=tags)
    if response.status_code >= 400:
        metrics.ERRORS.inc(tags=tags)
    # One access line per request: never bodies, media or text (streams: latency to the first byte).
    # A stream's line is written when it ends: a log record costs ~0.85 ms in a replica, which
    # would otherwise stand between the first token and the client.
    line = (
        "%s %s %d %.1fms key=%s",
        request.method,
        route,
        response.status_code,
        (time.perf_counter() - started) * 1000,
        getattr(request.state, "key_id", "-"),
    )
    if isinstance(response, StreamingResponse):  # still in flight until the stream ends
        response.body_iterator = _tracked_stream(route, response.body_iterator, lambda: log.info(*line))
    else:
        _track(route, -1)
        log.info(*line)
    return response


class ClientDisconnected(Exception):
    """The client closed its connection before the response was ready."""


async def _unless_client_leaves(request: Request, work: Awaitable[Any]) -> Any:
    """`await work`, unless the client disconnects first: then `work` is cancelled and
    `ClientDisconnected` raised. Behind Serve's Python proxy a disconnect also cancels this handler;
    behind HAProxy (direct ingress) nothing else notices it, and a non-streaming generation would run
    to its end for nobody. Streaming responses get the same watch from Starlette."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done() and watch.exception() is not None:  # the watch itself failed: just wait
            await asyncio.wait({task})
        if task.done():
            return task.result()
        raise ClientDisconnected
    finally:
        for pending in (task, watch):
            if not pending.done():
                pending.cancel()


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone (the body has been read, so `receive` waits for that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _peeked(stream) -> tuple[Any, AsyncIterator[Any]]:
    """(first item or None, `stream` from its first item on), the first one already fetched (errors
    raised here, not mid-response)."""
    iterator = stream.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        first = None

    async def chained() -> AsyncIterator[Any]:
        if first is None:
            return
        yield first
        async for item in iterator:
            yield item

    return first, chained()


async def _cancel_unless_read_to_end(body: AsyncIterator[bytes], cancel: Callable[[], None]) -> AsyncIterator[bytes]:
    """`body`, calling `cancel` if it is abandoned before its end (the client went away mid-stream):
    the decoder then drops the sequence at once. Serve also carries a cancelled request over to the
    calls it made, but a fast decoder loses that race now and then (a stream kept generating after
    its client left, seen once in 20 disconnects); cancelling twice is harmless."""
    finished = False
    try:
        async for piece in body:
            yield piece
        finished = True
    finally:
        if not finished:
            cancel()


def _server_timing(started: float, decoder_called: float, first_event: Any) -> str | None:
    """`Server-Timing` for a stream's response: where its time to first token went. `ingress` is
    this replica's share (request in → first token out), `prep` its own work before it calls the
    decoder (the body, validation, encoders, the prompt), `decoder` the decoder replica's (request
    in → first token: embedding, a slot, prefill). What a client measures beyond `ingress` is the
    HTTP proxy's hops; `ingress` − `prep` − `decoder` is the round trip between the replicas."""
    decoder_s = getattr(first_event, "first_token_s", None)
    if decoder_s is None:
        return None
    ingress_s = time.perf_counter() - started
    return (
        f'ingress;dur={ingress_s * 1000:.1f};desc="ingress: request to first token", '
        f'prep;dur={(decoder_called - started) * 1000:.1f};desc="ingress: request to decoder call", '
        f'decoder;dur={decoder_s * 1000:.1f};desc="decoder: request to first token"'
    )


class Ingress:
    def __init__(self, config: dict[str, Any], audio_handle, vision_handle, llm_handle) -> None:
        self.config = ChorusConfig.model_validate(config)
        self.audio = audio_handle
        self.vision = vision_handle
        self.llm = llm_handle
        self._decoder_info: dict[str, Any] | None = None
        self._tokenizer = None
        self._init_lock = asyncio.Lock()
        self.created = now()
        self.keys = KeyStore(self.config.auth)
        per_minute = self.config.auth.requests_per_minute
        self.rate_limiter = RateLimiter(per_minute) if per_minute else None
        self.fetcher = RemoteMediaFetcher(self.config.remote_media)

    def _admit(self, request: Request) -> None:
        """Authenticate and rate-limit before any other work (401 / 429 with Retry-After)."""
        if not self.keys.enabled:
            return
        key_id = self.keys.identify(request.headers.get("authorization"))
        if key_id is None:
            raise APIError(
                401,
                "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.",
                type="invalid_request_error",
                code="invalid_api_key",
            )
        request.state.key_id = key_id
        if self.rate_limiter is not None:
            wait = self.rate_limiter.acquire(key_id)
            if wait > 0:
                raise APIError(
                    429,
                    "Rate limit reached for this API key; retry after the time in the Retry-After header.",
                    type="requests",
                    code="rate_limit_exceeded",
                    headers={"Retry-After": retry_after_header(wait)},
                )

    def _too_large(self) -> APIError:
        return APIError(413, f"request body exceeds {self.config.limits.max_body_bytes} bytes", code="request_too_large")

    def _check_declared_size(self, request: Request) -> None:
        """413 from the Content-Length header alone, before any of the body is read."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.config.limits.max_body_bytes:
            raise self._too_large()

    async def _read_body(self, request: Request) -> bytes:
        """The body, refused with 413 as soon as it is known to exceed the limit."""
        self._check_declared_size(request)
        limit = self.config.limits.max_body_bytes
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise self._too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    async def _ensure_decoder_info(self) -> None:
        """Fetch the decoder's tokenizer and limits once (same tokenizer the decoder runs)."""
        if self._tokenizer is not None:
            return
        async with self._init_lock:
            if self._tokenizer is None:
                self._decoder_info = await self.llm.info.remote()
                self._tokenizer = await self.llm.tokenizer.remote()

    # --- routes --------------------------------------------------------------------------------

    @app.get("/health", openapi_extra=openapi.health(app))
    async def health(self) -> JSONResponse:
        async def probe(name: str, handle) -> tuple[str, dict[str, Any]]:
            if handle is None:
                return name, {"status": "not_configured"}
            try:
                return name, await asyncio.wait_for(handle.info.remote(), HEALTH_TIMEOUT_S)
            except Exception as err:  # a sick deployment is reported, not raised
                return name, {"status": "unavailable", "error": type(err).__name__}

        results = dict(
            await asyncio.gather(
                probe("audio_encoder", self.audio), probe("vision_encoder", self.vision), probe("llm_decoder", self.llm)
            )
        )
        healthy = all(r["status"] in ("ok", "not_configured") for r in results.values())
        body = {"status": "ok" if healthy else "degraded", "deployments": results}
        return JSONResponse(body, status_code=200 if healthy else 503)

    @app.get("/v1/models", openapi_extra=openapi.models(app))
    async def models(self, request: Request) -> Response:
        return await _respond(request, "/v1/models", self._models(request), media_param=None)

    async def _models(self, request: Request) -> Response:
        self._admit(request)
        ids = [self.config.served_model_name, self.config.whisper_model_name(), *self.config.transcription_model_names]
        cards = [ModelCard(id=i, created=self.created) for i in dict.fromkeys(ids)]
        return JSONResponse(ModelList(data=cards).model_dump())

    @app.post("/v1/chat/completions", openapi_extra=openapi.chat_completions(app))
    async def chat_completions(self, request: Request) -> Response:
        return await _respond(request, "/v1/chat/completions", self._chat(request), media_param=None, limits=self.config.limits)

    @app.post("/v1/audio/transcriptions", openapi_extra=openapi.transcriptions(app))
    async def transcriptions(self, request: Request) -> Response:
        return await _respond(request, "/v1/audio/transcriptions", self._transcribe(request), media_param="file", limits=self.config.limits)

    # --- chat ----------------------------------------------------------------------------------

    async def _parse(self, request: Request) -> ChatCompletionRequest:
        raw = await self._read_body(request)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise APIError(400, "We could not parse the JSON body of your request.", code="invalid_json") from err
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object", code="invalid_json")
        try:
            return ChatCompletionRequest.model_validate(body)
        except ValidationError as err:
            raise validation_error(err.errors()) from err

    async def _chat(self, request: Request) -> Response:
        self._admit(request)
        req = await self._parse(request)
        if req.model != self.config.served_model_name:
            raise model_not_found(req.model)
        text_chars = sum(len(p.text) for m in req.messages for p in m.parts() if isinstance(p, TextPart))
        text_chars += sum(len(s) for s in req.stop or [])
        if text_chars > self.config.limits.max_text_chars:
            raise APIError(
                400,
                f"the request holds {text_chars} characters of text; this deployment accepts at most "
                f"{self.config.limits.max_text_chars}",
                param="messages",
                code="text_too_long",
            )
        await self._ensure_decoder_info()
        info = self._decoder_info or {}

        audio_mode = (req.chorus.fusion if req.chorus and req.chorus.fusion else None) or self.config.fusion.audio_mode
        limits = self.config.limits
        messages, media = await router.extract(req, self.fetcher, limits.max_media_items)
        for item in media:
            if item.kind == "image" and self.vision is None:
                raise APIError(
                    400,
                    "this deployment has no CLIP weights configured; set `vision` (model_name + pretrained tag or a "
                    "local checkpoint path) and `fusion.vision_projector` in the service config to accept images",
                    param=item.param,
                    code="vision_not_configured",
                )
            if item.kind == "image" and "image" not in info.get("projectors", []) and not info.get("random_projectors"):
                raise APIError(400, "no vision projector is configured", param=item.param, code="vision_not_configured")
            if item.kind == "audio" and audio_mode != "transcript" and "audio" not in info.get("projectors", []) and not info.get("random_projectors"):
                raise APIError(
                    400,
                    f"fusion mode '{audio_mode}' needs an audio projector, and none is configured; use "
                    "chorus.fusion='transcript'",
                    param="chorus.fusion",
                    code="fusion_unavailable",
                )

        encoded = await router.encode_all(media, audio_mode, self.audio, self.vision)
        plan = router.plan_prompt(messages, encoded, self._tokenizer, audio_mode)
        prompt_tokens = router.prompt_length(plan, encoded)
        max_context = int(info["max_context"])
        requested = req.requested_max_tokens()
        if prompt_tokens + (requested or 0) > max_context or prompt_tokens >= max_context:
            raise APIError(
                400,
                f"This model's maximum context length is {max_context} tokens. However, you requested "
                f"{prompt_tokens + (requested or 0)} tokens ({prompt_tokens} in the messages, {requested or 0} in "
                "the completion). Please reduce the length of the messages or completion.",
                param="messages",
                code="context_length_exceeded",
            )
        max_tokens = min(requested or limits.default_max_tokens, max_context - prompt_tokens)
        try:
            params = SamplingParams(
                max_tokens=max_tokens,
                temperature=1.0 if req.temperature is None else req.temperature,
                top_p=1.0 if req.top_p is None else req.top_p,
                seed=req.seed,
                stop=req.stop or [],
            )
        except (ValidationError, ValueError) as err:
            raise APIError(400, str(err)[:300], code="invalid_value") from err

        decode = DecodeRequest(plan=plan, media=encoded.features, params=params)
        # A request without media features (text, transcripts) goes to the decoder over Serve's
        # gRPC channel between replicas, its tokens stream back the same way: the round trip
        # before the first token 5.0 → 2.7 ms against Ray's actor calls, the default (README
        # "Benchmarks"). Features (up to megabytes) keep the object store, which the replicas'
        # 4 MiB gRPC message limit doesn't bound.
        by_reference = bool(encoded.features)
        decoder_called = time.perf_counter()
        generation = self.llm.options(stream=True, _by_reference=by_reference).generate.remote(decode)
        completion_id, created, model = new_completion_id(), now(), self.config.served_model_name
        if req.stream:
            # Wait for the first token before committing to a 200: overload, a decoder fault or a
            # bad prompt still get a proper status instead of an error event inside a 200 stream.
            first_event, stream = await _peeked(generation)
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            timing = _server_timing(request.state.started, decoder_called, first_event)
            if timing is not None:
                headers["Server-Timing"] = timing
            return StreamingResponse(
                _cancel_unless_read_to_end(
                    self._sse_stream(
                        stream,
                        completion_id,
                        created,
                        model,
                        include_usage,
                        request.state.deadline,
                        generation.cancel,
                        request.state.started,
                    ),
                    generation.cancel,
                ),
                media_type="text/event-stream",
                headers=headers,
            )
        try:
            completion = await _unless_client_leaves(
                request, self._collect(generation, completion_id, created, model, request.state.started)
            )
        except BaseException:  # the client left, the deadline passed, or the decoder failed
            generation.cancel()
            raise
        return JSONResponse(completion)

    async def _collect(self, stream, completion_id: str, created: int, model: str, started: float) -> dict[str, Any]:
        text: list[str] = []
        finish, prompt_tokens, completion_tokens = "stop", 0, 0
        first = None
        async for event in stream:
            first = first or time.perf_counter()
            text.append(event.text)
            prompt_tokens, completion_tokens = event.prompt_tokens, event.completion_tokens
            finish = event.finish_reason or finish
        self._record_timing(started, first, completion_tokens)
        usage = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )
        choice = Choice(message=ResponseMessage(content="".join(text)), finish_reason=finish)  # type: ignore[arg-type]
        return ChatCompletion(id=completion_id, created=created, model=model, choices=[choice], usage=usage).model_dump()

    async def _sse_stream(
        self,
        stream,
        completion_id: str,
        created: int,
        model: str,
        include_usage: bool,
        deadline: float | None = None,
        cancel: Callable[[], None] | None = None,
        started: float | None = None,
    ) -> AsyncIterator[bytes]:
        def chunk(delta: Delta, finish: str | None = None, usage: Usage | None = None, empty: bool = False) -> bytes:
            choices = [] if empty else [ChunkChoice(delta=delta, finish_reason=finish)]  # type: ignore[arg-type]
            body = ChatCompletionChunk(id=completion_id, created=created, model=model, choices=choices, usage=usage)
            payload = body.model_dump()
            for choice in payload["choices"]:  # OpenAI sends only the delta fields that are set
                choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
            if not include_usage:  # `usage` appears on chunks only when the client asked for it
                payload.pop("usage")
            return _sse(payload)

        # The role chunk leaves with the first content chunk: one write, one hop through Serve's proxy
        # fewer before the first token reaches the client.
        pending = chunk(Delta(role="assistant", content=""))
        start = time.perf_counter() if started is None else started  # TTFT counts from the request's arrival
        first = last = None
        prompt_tokens = completion_tokens = 0
        finish = "stop"
        try:
            async for event in stream:
                now_t = time.perf_counter()
                if first is None:
                    first = now_t
                elif last is not None:
                    metrics.INTER_TOKEN.observe(now_t - last, tags={"route": "/v1/chat/completions"})
                last = now_t
                prompt_tokens, completion_tokens = event.prompt_tokens, event.completion_tokens
                if event.text:
                    yield pending + chunk(Delta(content=event.text))
                    pending = b""
                if event.finish_reason:
                    finish = event.finish_reason
                elif deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError("stream deadline")
        except TimeoutError:
            if cancel is not None:
                cancel()  # frees the decoder slot
            yield pending + _sse(APIError(504, "the request did not complete in time", type=SERVER_ERROR, code="timeout").body())
            yield _sse("[DONE]")
            return
        except Exception as err:
            # Never a silently truncated stream: the client gets an error event, then [DONE].
            log.exception("stream failed")
            status = 400 if isinstance(err, MediaError) else 500
            api_err = from_media_error(err) if isinstance(err, MediaError) else APIError(status, "internal error", type=SERVER_ERROR)
            yield pending + _sse(api_err.body())
            yield _sse("[DONE]")
            return
        self._record_timing(start, first, completion_tokens)
        yield pending + chunk(Delta(), finish=finish)
        if include_usage:
            usage = Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            )
            yield chunk(Delta(), usage=usage, empty=True)
        yield _sse("[DONE]")

    @staticmethod
    def _record_timing(started: float, first: float | None, completion_tokens: int) -> None:
        route = {"route": "/v1/chat/completions"}
        if first is not None:
            metrics.TTFT.observe(first - started, tags=route)
            elapsed = time.perf_counter() - first
            if completion_tokens > 1 and elapsed > 0:
                metrics.TOKENS_PER_S.observe((completion_tokens - 1) / elapsed, tags=route)

    # --- transcriptions ------------------------------------------------------------------------

    async def _transcribe(self, request: Request) -> Response:
        self._admit(request)
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise APIError(400, "expected a multipart/form-data body", code="invalid_request")
        # The whole body under the byte cap first (a chunked upload has no Content-Length to check);
        # the form parser then reads it from memory.
        request._body = await self._read_body(request)
        try:
            form = await request.form(max_files=1, max_fields=8)
        except Exception as err:
            raise APIError(400, "could not parse the multipart form", code="invalid_request") from err
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise APIError(400, "a 'file' field with the audio is required", param="file", code="missing_file")
        model = str(form.get("model") or "")
        accepted = {self.config.whisper_model_name(), *self.config.transcription_model_names}
        if model not in accepted:
            if not model:
                raise APIError(400, "the 'model' field is required", param="model", code="missing_model")
            raise model_not_found(model)
        response_format = str(form.get("response_format") or "json")
        if response_format not in TRANSCRIPTION_FORMATS:
            raise APIError(
                400,
                f"response_format must be one of {', '.join(TRANSCRIPTION_FORMATS)}",
                param="response_format",
                code="invalid_value",
            )
        language = form.get("language")
        language = str(language) if language else None
        data = await upload.read()
        if not data:
            raise APIError(400, "the uploaded file is empty", param="file", code="invalid_media")
        result = await self.audio.encode.remote(data, False, True, language)
        if response_format == "text":
            return PlainTextResponse(result.transcript)
        if response_format == "json":
            return JSONResponse({"text": result.transcript})
        return JSONResponse(
            {
                "task": "transcribe",
                "language": result.language,
                "duration": round(result.duration_s, 3),
                "text": result.transcript,
                "segments": [
                    {"id": i, "start": s["start"], "end": s["end"], "text": s["text"]}
                    for i, s in enumerate(result.segments or [])
                ],
            }
        )


# The FastAPI-wrapped class must live at module level: Ray pickles it by reference, so the replica
# imports this very module and sees the routes bound to this class (a wrapper built elsewhere is
# pickled by value and its routes lose their `self` binding).
IngressDeployment = serve.ingress(app)(Ingress)
