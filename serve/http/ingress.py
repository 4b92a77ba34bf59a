"""The HTTP API (FastAPI on Ray Serve): thin routes over the services.

Each route admits the request (API key, rate), reads and validates its body, calls a service, and
writes the answer as JSON or server-sent events; `respond` maps every failure to OpenAI's error
body. This module imports no model code: prompts are rendered by the decoder, media decoded by
the encoders.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from fusion.registry import MODALITIES
from serve.admission import ANONYMOUS, Gate
from serve.config import ChorusConfig
from serve.errors import InvalidRequest, MethodNotAllowed, NotFound, model_not_found
from serve.metrics import node_metrics_text
from serve.protocol import ChatCompletionRequest, ModelCard, ModelList, now
from serve.protocol.audio_form import parse_audio_form
from serve.protocol.parse import parse_json_body
from serve.protocol.realtime import TurnDetection
from serve.protocol.responses import (
    ConversationCreateRequest,
    ConversationItemsRequest,
    ConversationUpdateRequest,
    ResponseCreateRequest,
)
from serve.protocol.speech import SpeechRequest
from serve.protocol.transcription import MAX_FORM_FIELDS, Task
from serve.services.chat import ChatService
from serve.services.conversations import ConversationsService
from serve.services.fetch import RemoteMediaFetcher
from serve.services.realtime import RealtimeSession, silero_vad
from serve.services.realtime_outbox import Outbox
from serve.services.responses import ResponsesService, StoreAccess
from serve.services.speech import SpeechService
from serve.services.spoken import SpokenAnswers
from serve.services.transcription import TranscriptionService
from serve.store import AuditEntry

from . import openapi, openapi_audio, openapi_stored, openapi_voice, realtime, sse
from .console import Console
from .errors import error_response
from .respond import cancel_unless_read_to_end, in_flight, request_id, respond, server_timing, unless_client_leaves

log = logging.getLogger("ray.serve.chorus.ingress")
app = FastAPI(title="Chorus", description="Multimodal assistant, OpenAI-compatible API")
HEALTH_TIMEOUT_S = 5.0
CHAT, MODELS = "/v1/chat/completions", "/v1/models"
TRANSCRIPTIONS, TRANSLATIONS = "/v1/audio/transcriptions", "/v1/audio/translations"
RESPONSES, CONVERSATIONS, SPEECH = "/v1/responses", "/v1/conversations", "/v1/audio/speech"
REALTIME = "/v1/realtime"
DEFAULT_PAGE, MAX_PAGE = 20, 100  # OpenAI's list `limit`: default 20, 1..100
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class Ingress:
    """The routes, bound to this replica's services. `encoders` maps each configured modality kind
    (the registry's key) to its encoder deployment's handle."""

    def __init__(self, config: dict[str, Any], encoders: dict[str, Any], llm_handle: Any, speech_handle: Any = None) -> None:
        self.config = ChorusConfig.model_validate(config)
        self.encoders = dict(encoders)
        self.llm = llm_handle
        self.created = now()
        self.gate = Gate(self.config.auth)
        self.chat = ChatService(self.config, self.encoders, llm_handle, RemoteMediaFetcher(self.config.remote_media))
        self.transcription = TranscriptionService(self.config, self.encoders.get("audio"))
        self.speech = SpeechService(self.config, speech_handle)
        self.spoken = SpokenAnswers(self.speech)
        self.sessions = realtime.Sessions()
        if self.config.speech is not None:
            silero_vad(TurnDetection())  # load the VAD model now (onnxruntime), not in the first call's session
        self.store = StoreAccess(self.config.store)
        self.responses = ResponsesService(self.chat, self.store)
        self.conversations = ConversationsService(self.store)
        self.console = Console(self.config.console)

    def _admit(self, request: Request) -> None:
        """Authenticate and rate-limit before any other work (401 / 429 with Retry-After)."""
        request.state.key_id = self.gate.admit(request.headers.get("authorization"))

    async def _audit(self, request: Request, status: int, latency_ms: float) -> None:
        """One audit row per API request: who, when, route, status, tokens, latency, policy flags;
        never content. A store that fails to write it is logged, never the client's problem."""
        try:
            store = await self.store.get()
            if store is None:
                return
            info = getattr(request.state, "audit", None) or {}
            await store.audit(
                AuditEntry(
                    at=time.time(),
                    key_id=getattr(request.state, "key_id", None) or ANONYMOUS,
                    route=request.scope.get("route").path if request.scope.get("route") else request.url.path[:200],
                    method=request.method,
                    status=status,
                    request_id=request_id(request),
                    prompt_tokens=info.get("prompt_tokens"),
                    completion_tokens=info.get("completion_tokens"),
                    latency_ms=round(latency_ms, 2),
                    flags=list(info.get("flags", [])),
                    response_id=info.get("response_id"),
                )
            )
        except Exception:
            log.exception("could not write the audit row request_id=%s", request_id(request))

    def _route(self, request: Request, route: str, work: Any, *, body: bool = False) -> Any:
        """`respond` for a route of the stored APIs: admitted first, the body read when it has one."""
        limits = self.config.limits if body else None
        return respond(request, route, work, media_param=None, limits=limits, admit=lambda: self._admit(request), audit=self._audit)

    # --- routes --------------------------------------------------------------------------------

    @app.get("/health", openapi_extra=openapi.health(app))
    async def health(self) -> JSONResponse:
        async def probe(handle: Any) -> dict[str, Any]:
            if handle is None:
                return {"status": "not_configured"}
            try:
                return await asyncio.wait_for(handle.info.remote(), HEALTH_TIMEOUT_S)
            except Exception as err:  # a sick deployment is reported, not raised
                return {"status": "unavailable", "error": type(err).__name__}

        handles: dict[str, Any] = {}
        for media in MODALITIES.values():  # images and documents share one deployment
            handles[_snake(media.deployment)] = handles.get(_snake(media.deployment)) or self.encoders.get(media.kind)
        handles["llm_decoder"] = self.llm
        handles["speech"] = self.speech.handle
        results = dict(zip(handles, await asyncio.gather(*(probe(h) for h in handles.values()))))
        healthy = all(r["status"] in ("ok", "not_configured") for r in results.values())
        body = {
            "status": "ok" if healthy else "degraded",
            "deployments": results,
            "ingress": {"in_flight": dict(in_flight.counts), "realtime_sessions": self.sessions.open},
            # the store is not a deployment: a store that is down fails the stored APIs, not chat
            "store": await self.store.health(HEALTH_TIMEOUT_S),
        }
        return JSONResponse(body, status_code=200 if healthy else 503)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def console_page(self, request: Request) -> Response:
        return await respond(request, "/", _static(self.console, "index.html", request), media_param=None)

    @app.api_route("/console/{name:path}", methods=["GET", "HEAD"], include_in_schema=False)
    async def console_file(self, request: Request, name: str) -> Response:
        return await respond(request, "/console/{name}", _static(self.console, name, request), media_param=None)

    @app.get("/metrics", openapi_extra=openapi.metrics(app))
    async def metrics(self, request: Request) -> Response:
        return await respond(request, "/metrics", self._metrics(), media_param=None, admit=lambda: self._admit(request))

    async def _metrics(self) -> Response:
        text = await node_metrics_text()
        if text is None:
            raise NotFound("no metrics agent runs on this node", code="metrics_unavailable")
        return PlainTextResponse(text, media_type=PROMETHEUS_TEXT)

    @app.get(MODELS, openapi_extra=openapi.models(app))
    async def models(self, request: Request) -> Response:
        return await respond(request, MODELS, self._models(), media_param=None, admit=lambda: self._admit(request), audit=self._audit)

    @app.get(MODELS + "/{model:path}", openapi_extra=openapi.model(app))
    async def model(self, request: Request) -> Response:
        model = request.path_params["model"]
        admit = lambda: self._admit(request)  # noqa: E731
        return await respond(request, MODELS + "/{model}", self._model(model), media_param=None, admit=admit, audit=self._audit)

    def _cards(self) -> dict[str, ModelCard]:
        ids = [self.config.served_model_name, *self.transcription.model_names(), *self.speech.model_names()]
        return {i: ModelCard(id=i, created=self.created) for i in dict.fromkeys(ids)}

    async def _models(self) -> Response:
        return JSONResponse(ModelList(data=list(self._cards().values())).model_dump())

    async def _model(self, model: str) -> Response:
        card = self._cards().get(model)
        if card is None:
            raise model_not_found(model)
        return JSONResponse(card.model_dump())

    @app.post(CHAT, openapi_extra=openapi.chat_completions(app))
    async def chat_completions(self, request: Request) -> Response:
        limits, admit = self.config.limits, lambda: self._admit(request)
        return await respond(request, CHAT, self._chat(request), media_param=None, limits=limits, admit=admit, audit=self._audit)

    @app.post(TRANSCRIPTIONS, openapi_extra=openapi_audio.transcriptions(app))
    async def transcriptions(self, request: Request) -> Response:
        limits, admit = self.config.limits, lambda: self._admit(request)
        work = self._audio_text(request, "transcribe")
        return await respond(request, TRANSCRIPTIONS, work, "file", limits=limits, admit=admit, audit=self._audit)

    @app.post(TRANSLATIONS, openapi_extra=openapi_audio.translations(app))
    async def translations(self, request: Request) -> Response:
        limits, admit = self.config.limits, lambda: self._admit(request)
        work = self._audio_text(request, "translate")
        return await respond(request, TRANSLATIONS, work, "file", limits=limits, admit=admit, audit=self._audit)

    @app.post(SPEECH, openapi_extra=openapi_voice.speech(app))
    async def speech(self, request: Request) -> Response:
        limits, admit = self.config.limits, lambda: self._admit(request)
        return await respond(request, SPEECH, self._speak(request), media_param=None, limits=limits, admit=admit, audit=self._audit)

    # --- chat ----------------------------------------------------------------------------------

    async def _chat(self, request: Request) -> Response:
        req = self.spoken.check(parse_json_body(request.state.body, ChatCompletionRequest))
        generation = await self.chat.start(req)
        request.state.audit = generation.audit
        started = request.state.started
        if not req.stream:
            try:
                completion = await unless_client_leaves(request, self.chat.complete(generation, started))
            except BaseException:  # the client left, the deadline passed, or the decoder failed
                generation.cancel()
                raise
            if req.spoken():
                completion = await unless_client_leaves(request, self.spoken.complete(req, completion))
            return JSONResponse(completion)
        # Wait for the first token before committing to a 200: overload, a decoder fault or a
        # prompt over the context still get a proper status instead of an error event in a 200.
        first, events = await self.chat.first_event(generation)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        headers = dict(sse.HEADERS)
        timing = server_timing(started, generation.decoder_called, first)
        if timing is not None:
            headers["Server-Timing"] = timing
        chunks = self.chat.chunks(generation, events, include_usage, started, request.state.deadline, request_id(request))
        if req.spoken():
            chunks = self.spoken.chunks(req, chunks, generation.cancel, request_id(request))
        body = cancel_unless_read_to_end(sse.encode(chunks), generation.cancel)
        return StreamingResponse(body, media_type=sse.MEDIA_TYPE, headers=headers)

    # --- realtime ------------------------------------------------------------------------------

    @app.websocket(REALTIME)
    async def realtime_socket(self, ws: WebSocket) -> None:
        limits = self.config.realtime
        await realtime.serve_session(
            ws,
            admit=self.gate.admit,
            models=[self.config.served_model_name, *self.config.realtime_model_names],
            sessions=self.sessions,
            make_session=self._realtime_session,
            max_sessions=limits.max_sessions,
            max_session_s=limits.max_session_s,
            max_pending_bytes=limits.max_pending_bytes,
            send_timeout_s=limits.send_timeout_s,
        )

    def _realtime_session(self, model: str, outbox: Outbox) -> RealtimeSession:
        audio = self.encoders.get("audio")

        async def transcribe(wav: bytes) -> str:
            return (await audio.encode.remote(wav, False, True, None)).transcript or ""

        return RealtimeSession(
            config=self.config, model=model, outbox=outbox, chat=self.chat, speech=self.speech,
            transcribe=transcribe if audio is not None else None, vad_factory=silero_vad if self.config.speech else None,
        )

    # --- speech --------------------------------------------------------------------------------

    async def _speak(self, request: Request) -> Response:
        req = parse_json_body(request.state.body, SpeechRequest)
        # The first sentence's audio is awaited here: a failure before any audio still gets a status.
        stream = await self.speech.start(req)
        if req.stream_format == "sse":
            body = cancel_unless_read_to_end(sse.encode_events(self.speech.sse(req, stream, request_id(request))), stream.cancel)
            return StreamingResponse(body, media_type=sse.MEDIA_TYPE, headers=dict(sse.HEADERS))
        body = cancel_unless_read_to_end(stream.chunks(), stream.cancel)
        return StreamingResponse(body, media_type=stream.content_type)

    # --- responses -----------------------------------------------------------------------------

    @app.post(RESPONSES, openapi_extra=openapi_stored.responses_create(app))
    async def create_response(self, request: Request) -> Response:
        return await self._route(request, RESPONSES, self._create_response(request), body=True)

    async def _create_response(self, request: Request) -> Response:
        req = parse_json_body(request.state.body, ResponseCreateRequest)
        turn = await self.responses.start(req, _owner(request))
        request.state.audit = turn.generation.audit
        turn.generation.audit["response_id"] = turn.response_id if turn.stored else None
        started, deadline, rid = request.state.started, request.state.deadline, request_id(request)
        if not req.stream:
            try:
                body = await unless_client_leaves(request, self.responses.complete(turn, started, deadline, rid))
            except BaseException:
                turn.generation.cancel()
                raise
            return JSONResponse(body)
        events = self.responses.events(turn, started, deadline, rid)
        body = cancel_unless_read_to_end(sse.encode_events(events), turn.generation.cancel)
        return StreamingResponse(body, media_type=sse.MEDIA_TYPE, headers=dict(sse.HEADERS))

    @app.get(RESPONSES + "/{response_id}", openapi_extra=openapi_stored.response_get(app))
    async def get_response(self, request: Request, response_id: str) -> Response:
        work = _json(lambda: self.responses.retrieve(_owner(request), response_id))
        return await self._route(request, RESPONSES + "/{id}", work)

    @app.delete(RESPONSES + "/{response_id}", openapi_extra=openapi_stored.response_delete(app))
    async def delete_response(self, request: Request, response_id: str) -> Response:
        work = _json(lambda: self.responses.delete(_owner(request), response_id))
        return await self._route(request, RESPONSES + "/{id}", work)

    @app.post(RESPONSES + "/{response_id}/cancel", openapi_extra=openapi_stored.response_get(app))
    async def cancel_response(self, request: Request, response_id: str) -> Response:
        work = _json(lambda: self.responses.cancel(_owner(request), response_id))
        return await self._route(request, RESPONSES + "/{id}/cancel", work)

    @app.get(RESPONSES + "/{response_id}/input_items", openapi_extra=openapi_stored.item_list(app))
    async def response_input_items(self, request: Request, response_id: str) -> Response:
        async def work() -> Response:
            after, limit, order = _page(request)
            return JSONResponse(await self.responses.input_items(_owner(request), response_id, after, limit, order))

        return await self._route(request, RESPONSES + "/{id}/input_items", work())

    # --- conversations ---------------------------------------------------------------------------

    @app.get(CONVERSATIONS, openapi_extra=openapi_stored.conversation_list(app))
    async def list_conversations(self, request: Request) -> Response:
        """The caller's conversations: a Chorus extension (OpenAI has no such route)."""
        work = _json(lambda: self.conversations.list(_owner(request), *_page(request)))
        return await self._route(request, CONVERSATIONS, work)

    @app.post(CONVERSATIONS, openapi_extra=openapi_stored.conversation_create(app))
    async def create_conversation(self, request: Request) -> Response:
        async def work() -> Response:
            req = parse_json_body(request.state.body, ConversationCreateRequest)
            return JSONResponse(await self.conversations.create(_owner(request), req))

        return await self._route(request, CONVERSATIONS, work(), body=True)

    @app.get(CONVERSATIONS + "/{conversation_id}", openapi_extra=openapi_stored.conversation_get(app))
    async def get_conversation(self, request: Request, conversation_id: str) -> Response:
        work = _json(lambda: self.conversations.retrieve(_owner(request), conversation_id))
        return await self._route(request, CONVERSATIONS + "/{id}", work)

    @app.post(CONVERSATIONS + "/{conversation_id}", openapi_extra=openapi_stored.conversation_update(app))
    async def update_conversation(self, request: Request, conversation_id: str) -> Response:
        async def work() -> Response:
            req = parse_json_body(request.state.body, ConversationUpdateRequest)
            return JSONResponse(await self.conversations.update(_owner(request), conversation_id, req))

        return await self._route(request, CONVERSATIONS + "/{id}", work(), body=True)

    @app.delete(CONVERSATIONS + "/{conversation_id}", openapi_extra=openapi_stored.conversation_delete(app))
    async def delete_conversation(self, request: Request, conversation_id: str) -> Response:
        work = _json(lambda: self.conversations.delete(_owner(request), conversation_id))
        return await self._route(request, CONVERSATIONS + "/{id}", work)

    @app.get(CONVERSATIONS + "/{conversation_id}/items", openapi_extra=openapi_stored.item_list(app))
    async def conversation_items(self, request: Request, conversation_id: str) -> Response:
        async def work() -> Response:
            after, limit, order = _page(request)
            return JSONResponse(await self.conversations.list_items(_owner(request), conversation_id, after, limit, order))

        return await self._route(request, CONVERSATIONS + "/{id}/items", work())

    @app.post(CONVERSATIONS + "/{conversation_id}/items", openapi_extra=openapi_stored.conversation_items_create(app))
    async def add_conversation_items(self, request: Request, conversation_id: str) -> Response:
        async def work() -> Response:
            req = parse_json_body(request.state.body, ConversationItemsRequest)
            return JSONResponse(await self.conversations.add_items(_owner(request), conversation_id, req))

        return await self._route(request, CONVERSATIONS + "/{id}/items", work(), body=True)

    @app.get(CONVERSATIONS + "/{conversation_id}/items/{item_id}", openapi_extra=openapi_stored.item_get(app))
    async def get_conversation_item(self, request: Request, conversation_id: str, item_id: str) -> Response:
        work = _json(lambda: self.conversations.get_item(_owner(request), conversation_id, item_id))
        return await self._route(request, CONVERSATIONS + "/{id}/items/{item_id}", work)

    @app.delete(CONVERSATIONS + "/{conversation_id}/items/{item_id}", openapi_extra=openapi_stored.conversation_get(app))
    async def delete_conversation_item(self, request: Request, conversation_id: str, item_id: str) -> Response:
        work = _json(lambda: self.conversations.delete_item(_owner(request), conversation_id, item_id))
        return await self._route(request, CONVERSATIONS + "/{id}/items/{item_id}", work)

    # --- transcriptions and translations --------------------------------------------------------

    async def _audio_text(self, request: Request, task: Task) -> Response:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise InvalidRequest("expected a multipart/form-data body", code="invalid_request")
        # The whole body is in already, under the byte cap (a chunked upload has no Content-Length
        # to check); the form parser reads it from memory.
        request._body = request.state.body
        try:
            form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS)
        except Exception as err:
            raise InvalidRequest("could not parse the multipart form", code="invalid_request") from err
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InvalidRequest("a 'file' field with the audio is required", param="file", code="missing_file")
        req = parse_audio_form(form, task)
        self.transcription.check(req.model)
        result = await self.transcription.run(await upload.read(), req)
        return PlainTextResponse(result) if isinstance(result, str) else JSONResponse(result)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """Unknown routes and wrong methods answer in OpenAI's error shape, naming the route."""
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 405:
        err = MethodNotAllowed(f"Method not allowed for this URL ({where}).", code="method_not_allowed")
        return error_response(err, headers={"Allow": exc.headers.get("Allow", "")} if exc.headers else None)
    if exc.status_code == 404:
        return error_response(NotFound(f"Invalid URL ({where}).", code="unknown_url"))
    return error_response(InvalidRequest(str(exc.detail)[:200], code="invalid_request"))


def _owner(request: Request) -> str:
    """Whose stored objects a request sees: its API key's id (`admit` sets it before any work)."""
    return getattr(request.state, "key_id", None) or ANONYMOUS


async def _json(work: Callable[[], Awaitable[Any]]) -> Response:
    """Run `work` once admitted (the owner is known only then) and answer its result as JSON."""
    return JSONResponse(await work())


async def _static(console: Console, name: str, request: Request) -> Response:
    """A console file: public (the page asks for the key), never audited (not an API request)."""
    return console.page(name, request.headers.get("if-none-match"))


def _page(request: Request) -> tuple[str | None, int, str]:
    """A list route's `after`, `limit` (1..100, default 20) and `order` (asc | desc, default desc)."""
    query = request.query_params
    after = query.get("after") or None
    raw = query.get("limit")
    try:
        limit = DEFAULT_PAGE if raw is None else int(raw)
    except ValueError as err:
        raise InvalidRequest("limit must be an integer from 1 to 100", param="limit", code="invalid_value") from err
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest("limit must be an integer from 1 to 100", param="limit", code="invalid_value")
    order = query.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be 'asc' or 'desc'", param="order", code="invalid_value")
    return after, limit, order


def _snake(name: str) -> str:
    """`AudioEncoder` → `audio_encoder` (the /health key of a deployment)."""
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


# The FastAPI-wrapped class must live at module level: Ray pickles it by reference, so the replica
# imports this very module and sees the routes bound to this class (a wrapper built elsewhere is
# pickled by value and its routes lose their `self` binding). `serve/app.py` makes it a deployment.
IngressDeployment = serve.ingress(app)(Ingress)
