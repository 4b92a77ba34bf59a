"""The HTTP API (FastAPI on Ray Serve): thin routes over the services.

Each route admits the request (API key, rate), reads and validates its body, calls a service, and
writes the answer as JSON or server-sent events; `respond` maps every failure to OpenAI's error
body. This module imports no model code: prompts are rendered by the decoder, media decoded by
the encoders.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from fusion.registry import MODALITIES
from serve.admission import Gate
from serve.config import ChorusConfig
from serve.errors import InvalidRequest, MethodNotAllowed, NotFound, model_not_found
from serve.metrics import node_metrics_text
from serve.protocol import ChatCompletionRequest, ModelCard, ModelList, now
from serve.protocol.parse import parse_json_body
from serve.protocol.transcription import MAX_FORM_FIELDS
from serve.services.chat import ChatService
from serve.services.fetch import RemoteMediaFetcher
from serve.services.transcription import TranscriptionService

from . import openapi, sse
from .errors import error_response
from .respond import cancel_unless_read_to_end, in_flight, request_id, respond, server_timing, unless_client_leaves

app = FastAPI(title="Chorus", description="Multimodal assistant, OpenAI-compatible API")
HEALTH_TIMEOUT_S = 5.0
CHAT, TRANSCRIPTIONS, MODELS = "/v1/chat/completions", "/v1/audio/transcriptions", "/v1/models"
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class Ingress:
    """The routes, bound to this replica's services. `encoders` maps each configured modality kind
    (the registry's key) to its encoder deployment's handle."""

    def __init__(self, config: dict[str, Any], encoders: dict[str, Any], llm_handle: Any) -> None:
        self.config = ChorusConfig.model_validate(config)
        self.encoders = dict(encoders)
        self.llm = llm_handle
        self.created = now()
        self.gate = Gate(self.config.auth)
        self.chat = ChatService(self.config, self.encoders, llm_handle, RemoteMediaFetcher(self.config.remote_media))
        self.transcription = TranscriptionService(self.config, self.encoders.get("audio"))

    def _admit(self, request: Request) -> None:
        """Authenticate and rate-limit before any other work (401 / 429 with Retry-After)."""
        request.state.key_id = self.gate.admit(request.headers.get("authorization"))

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
        results = dict(zip(handles, await asyncio.gather(*(probe(h) for h in handles.values()))))
        healthy = all(r["status"] in ("ok", "not_configured") for r in results.values())
        body = {
            "status": "ok" if healthy else "degraded",
            "deployments": results,
            "ingress": {"in_flight": dict(in_flight.counts)},
        }
        return JSONResponse(body, status_code=200 if healthy else 503)

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
        return await respond(request, MODELS, self._models(), media_param=None, admit=lambda: self._admit(request))

    @app.get(MODELS + "/{model:path}", openapi_extra=openapi.model(app))
    async def model(self, request: Request) -> Response:
        model = request.path_params["model"]
        admit = lambda: self._admit(request)  # noqa: E731
        return await respond(request, MODELS + "/{model}", self._model(model), media_param=None, admit=admit)

    def _cards(self) -> dict[str, ModelCard]:
        ids = [self.config.served_model_name, *self.transcription.model_names()]
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
        return await respond(request, CHAT, self._chat(request), media_param=None, limits=limits, admit=admit)

    @app.post(TRANSCRIPTIONS, openapi_extra=openapi.transcriptions(app))
    async def transcriptions(self, request: Request) -> Response:
        limits, admit = self.config.limits, lambda: self._admit(request)
        return await respond(request, TRANSCRIPTIONS, self._transcribe(request), "file", limits=limits, admit=admit)

    # --- chat ----------------------------------------------------------------------------------

    async def _chat(self, request: Request) -> Response:
        req = parse_json_body(request.state.body, ChatCompletionRequest)
        generation = await self.chat.start(req)
        started = request.state.started
        if not req.stream:
            try:
                completion = await unless_client_leaves(request, self.chat.complete(generation, started))
            except BaseException:  # the client left, the deadline passed, or the decoder failed
                generation.cancel()
                raise
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
        body = cancel_unless_read_to_end(sse.encode(chunks), generation.cancel)
        return StreamingResponse(body, media_type=sse.MEDIA_TYPE, headers=headers)

    # --- transcriptions ------------------------------------------------------------------------

    async def _transcribe(self, request: Request) -> Response:
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
        response_format = str(form.get("response_format") or "json")
        self.transcription.check(str(form.get("model") or ""), response_format)
        language = str(form.get("language") or "") or None
        result = await self.transcription.transcribe(await upload.read(), response_format, language)
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


def _snake(name: str) -> str:
    """`AudioEncoder` → `audio_encoder` (the /health key of a deployment)."""
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


# The FastAPI-wrapped class must live at module level: Ray pickles it by reference, so the replica
# imports this very module and sees the routes bound to this class (a wrapper built elsewhere is
# pickled by value and its routes lose their `self` binding). `serve/app.py` makes it a deployment.
IngressDeployment = serve.ingress(app)(Ingress)
