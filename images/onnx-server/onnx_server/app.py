"""The HTTP API: OpenAI's /v1/chat/completions, /v1/completions and /v1/models, plus /health,
/ready and /metrics. Every client mistake is a 4xx with an OpenAI-style error body."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from onnx_server import schemas
from onnx_server.chat import ChatTemplate, TemplateFailure, load_template, parse_tool_calls
from onnx_server.engine import Engine, Job, NotReady, Overloaded, Sampling
from onnx_server.metrics import Metrics
from onnx_server.settings import Settings

log = logging.getLogger("onnx_server.api")
OPEN_PATHS = {"/health", "/ready", "/metrics", "/docs", "/openapi.json"}
# With "stream": true the answer is server-sent events.
STREAMED: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "description": "one server-sent event: data is a chunk as JSON, the last one [DONE]",
                    "required": ["data"],
                    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
                }
            }
        }
    }
}
KNOWN_PATHS = OPEN_PATHS | {"/v1/models", "/v1/chat/completions", "/v1/completions"}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorResponse} for code in (400, 401, 404, 413, 429, 503, 504)
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


def _error(status: int, message: str, kind: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    body = schemas.ErrorResponse(error=schemas.ErrorDetail(message=message, type=kind, param=param, code=code))
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


class Service:
    """What the routes share: settings, engine, template, metrics."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.model_name = metrics.model
        self.created = int(time.time())
        self.engine = Engine(
            settings.model,
            metrics,
            max_batch=settings.max_batch,
            max_waiting=settings.max_waiting,
            batch_wait_ms=settings.batch_wait_ms,
            threads=settings.threads,
        )
        special = _special_tokens(settings.model)
        self.template = ChatTemplate(load_template(settings.model), special)

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise ApiError(
                404,
                f"model {name!r} does not exist; this server serves {self.model_name!r}",
                code="model_not_found",
                param="model",
            )

    def budget(self, prompt_ids: list[int], requested: int | None) -> int:
        """max_tokens for a prompt, or a 400 when the two do not fit the context."""
        context = self.engine.context_length
        if not prompt_ids:
            raise ApiError(400, "the prompt is empty", param="prompt", code="empty_prompt")
        if len(prompt_ids) >= context:
            raise ApiError(
                400,
                f"the prompt is {len(prompt_ids)} tokens; this model's context is {context} tokens",
                param="messages",
                code="context_length_exceeded",
            )
        room = context - len(prompt_ids)
        if requested is not None and requested > room:
            raise ApiError(
                400,
                f"max_tokens {requested} plus the prompt's {len(prompt_ids)} tokens exceeds the context of {context}",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return requested if requested is not None else min(room, self.settings.default_max_tokens)


def _special_tokens(model_dir: Any) -> dict[str, str]:
    config = model_dir / "tokenizer_config.json"
    if not config.is_file():
        return {}
    data = json.loads(config.read_text())
    return {k: v for k, v in data.items() if k.endswith("_token") and isinstance(v, str)}


def _sampling(body: schemas._Sampling, guidance: tuple[str, str] | None) -> Sampling:
    temperature = 1.0 if body.temperature is None else body.temperature
    return Sampling(
        temperature=temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
        seed=body.seed,
        guidance=guidance,
    )


def _guidance(response_format: schemas.ResponseFormat | None) -> tuple[str, str] | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return ("json_schema", json.dumps({"type": "object"}))
    assert response_format.json_schema is not None  # ResponseFormat validates it
    return ("json_schema", json.dumps(response_format.json_schema.schema_ or {"type": "object"}))


class Guard:
    """Pure ASGI middleware (so routes still see client disconnects): API keys, body size and shape,
    request metrics and one JSON log line per request."""

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        rejection, receive = await self._check(scope, receive)
        if rejection is not None:
            await rejection(scope, receive, send_recording)
        else:
            await self.app(scope, receive, send_recording)
        path = scope["path"]
        self.service.metrics.requests.labels(path if path in KNOWN_PATHS else "other", str(status["code"])).inc()
        elapsed = round((time.perf_counter() - started) * 1000, 1)
        log.info("request", extra={"path": path, "status": status["code"], "ms": elapsed})

    async def _check(self, scope: Scope, receive: Receive) -> tuple[JSONResponse | None, Receive]:
        settings = self.service.settings
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        path = scope["path"]
        if (
            path not in OPEN_PATHS
            and not settings.allow_unauthenticated
            and not _authorized(headers, settings.api_keys)
        ):
            message = "missing or invalid API key (Authorization: Bearer <key>)"
            return _error(401, message, "authentication_error", code="invalid_api_key"), receive
        limit = settings.max_body_bytes
        too_large = _error(413, f"the body is larger than {limit} bytes", "invalid_request_error")
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return too_large, receive
        if scope["method"] != "POST" or not path.startswith("/v1/"):
            return None, receive
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return _error(400, "the client went away", "invalid_request_error"), receive
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return too_large, receive
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        if not body.lstrip().startswith(b"{"):
            return _error(400, "the body must be a JSON object", "invalid_request_error", code="invalid_json"), receive
        # The body is JSON whatever the client labelled it (curl -d says form-urlencoded).
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
        scope["headers"].append((b"content-type", b"application/json"))
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then the real channel: disconnects reach the route

        return None, replay


def _authorized(headers: dict[str, str], keys: tuple[str, ...]) -> bool:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    presented = token.strip().encode()
    # Compare with every key, in constant time per key, so timing reveals nothing.
    matches = [hmac.compare_digest(presented, key.encode()) for key in keys]
    return any(matches)


def _document_model_name(app: FastAPI, name: str) -> None:
    """The OpenAPI document names the one valid `model` value (clients and fuzzers see it)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            for schema in ("ChatCompletionRequest", "CompletionRequest"):
                document["components"]["schemas"][schema]["properties"]["model"]["enum"] = [name]
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings, metrics: Metrics | None = None) -> FastAPI:
    model_name = settings.served_model_name or settings.model.resolve().name
    service = Service(settings, metrics or Metrics(model_name))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.engine.start()
        yield
        # Uvicorn has drained the in-flight requests by now.
        await asyncio.to_thread(service.engine.stop)

    app = FastAPI(title="onnx-server", version="1.0.0", lifespan=lifespan, responses=ERRORS)
    app.state.service = service
    _document_model_name(app, service.model_name)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> JSONResponse:
        return _error(error.status, error.message, error.kind, error.param, error.code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        if first.get("type") == "json_invalid":
            return _error(400, "the body is not valid JSON", "invalid_request_error", code="invalid_json")
        if first.get("type") == "extra_forbidden":
            return _error(400, f"unknown parameter {param!r}", "invalid_request_error", param, "unknown_parameter")
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        return _error(400, message, "invalid_request_error", param, "invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return _error(error.status_code, str(error.detail), kind)

    app.add_middleware(Guard, service=service)

    @app.get("/health", response_model=schemas.Health)
    async def health() -> schemas.Health:
        return schemas.Health(status="ok")

    @app.get("/ready", response_model=schemas.Health, responses={503: {"model": schemas.ErrorResponse}})
    async def ready() -> Any:
        if service.engine.ready.is_set():
            return schemas.Health(status="ready")
        reason = service.engine.load_error or "the model is loading"
        return _error(503, reason, "service_unavailable")

    if settings.metrics_port == 0:

        @app.get("/metrics", response_class=Response, include_in_schema=False)
        async def metrics_endpoint() -> Response:
            return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", response_model=schemas.ModelList)
    async def models() -> schemas.ModelList:
        return schemas.ModelList(data=[schemas.ModelCard(id=service.model_name, created=service.created)])

    @app.post("/v1/chat/completions", response_model=schemas.ChatCompletion, responses=STREAMED)
    async def chat(body: schemas.ChatCompletionRequest, request: Request) -> Any:
        return await _chat(service, body, request)

    @app.post("/v1/completions", response_model=schemas.Completion, responses=STREAMED)
    async def completions(body: schemas.CompletionRequest, request: Request) -> Any:
        _common_checks(service, body)
        job = _job(service, request, body.prompt_text(), max_tokens=body.max_tokens, body=body, guidance=None)
        completion_id = f"cmpl-{uuid.uuid4().hex}"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _stream(job, _completion_chunks(service, job, completion_id, include_usage))
        text, reason, completion_tokens = await _collect(job, request)
        return schemas.Completion(
            id=completion_id,
            created=int(time.time()),
            model=service.model_name,
            choices=[schemas.CompletionChoice(index=0, text=text, finish_reason=reason)],  # type: ignore[arg-type]
            usage=_usage(job, completion_tokens),
        )

    return app


async def _chat(service: Service, body: schemas.ChatCompletionRequest, request: Request) -> Any:
    _common_checks(service, body)
    if body.response_format is not None and body.response_format.type != "text" and body.tools:
        raise ApiError(400, "response_format and tools cannot be combined", param="response_format")
    tools = None
    if body.tools and body.tool_choice != "none":
        tools = [tool.model_dump(exclude_none=True) for tool in body.tools]
    messages = [_message_dict(m) for m in body.messages]
    try:
        prompt = service.template.render(messages, tools)
    except TemplateFailure as error:
        raise ApiError(400, str(error), param="messages") from None
    max_tokens = body.max_completion_tokens or body.max_tokens
    job = _job(service, request, prompt, max_tokens=max_tokens, body=body, guidance=_guidance(body.response_format))
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return _stream(job, _chat_chunks(service, job, completion_id, include_usage, bool(tools)))
    text, reason, completion_tokens = await _collect(job, request)
    content, calls = parse_tool_calls(text) if tools else (text, [])
    finish = "tool_calls" if calls else reason
    message = schemas.ResponseMessage(
        content=content or (None if calls else ""),
        tool_calls=[schemas.ToolCall.model_validate(c) for c in calls] or None,
    )
    return schemas.ChatCompletion(
        id=completion_id,
        created=int(time.time()),
        model=service.model_name,
        choices=[schemas.ChatChoice(index=0, message=message, finish_reason=finish)],  # type: ignore[arg-type]
        usage=_usage(job, completion_tokens),
    )


def _message_dict(message: schemas.Message) -> dict[str, Any]:
    data: dict[str, Any] = {"role": message.role, "content": message.text()}
    if message.name:
        data["name"] = message.name
    if message.tool_calls:
        data["tool_calls"] = [c.model_dump() for c in message.tool_calls]
    if message.tool_call_id:
        data["tool_call_id"] = message.tool_call_id
    return data


def _common_checks(service: Service, body: schemas._Sampling) -> None:
    service.check_model(body.model)
    unsupported = body.unsupported()
    if unsupported == "n":
        raise ApiError(400, "only n=1 is supported", param="n", code="unsupported_parameter")
    if unsupported:
        raise ApiError(
            400,
            f"parameter {unsupported!r} is not supported by this server",
            param=unsupported,
            code="unsupported_parameter",
        )
    if not service.engine.ready.is_set():
        raise ApiError(503, "the model is loading; retry shortly", "service_unavailable")


def _job(
    service: Service,
    request: Request,
    prompt: str,
    *,
    max_tokens: int | None,
    body: schemas._Sampling,
    guidance: tuple[str, str] | None,
) -> Job:
    prompt_ids = service.engine.encode(prompt)
    job = Job(
        prompt=prompt,
        prompt_ids=prompt_ids,
        max_tokens=service.budget(prompt_ids, max_tokens),
        sampling=_sampling(body, guidance),
        stop=body.stop_list(),
        deadline=time.perf_counter() + service.settings.request_timeout,
        loop=asyncio.get_running_loop(),
    )
    if service.settings.log_prompts:
        log.info("prompt", extra={"prompt": prompt})
    try:
        service.engine.submit(job)
    except Overloaded:
        raise ApiError(429, "the server is at capacity; retry shortly", "rate_limit_error", code="overloaded") from None
    except NotReady:
        raise ApiError(503, "the model is loading; retry shortly", "service_unavailable") from None
    request.state.job = job
    return job


def _usage(job: Job, completion_tokens: int) -> schemas.Usage:
    prompt_tokens = len(job.prompt_ids)
    return schemas.Usage(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )


async def _collect(job: Job, request: Request) -> tuple[str, str, int]:
    """Wait for the whole answer; a client that goes away cancels it."""
    parts: list[str] = []

    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(0.2)
        job.cancelled.set()

    watcher = asyncio.create_task(watch())
    try:
        async for event in job.events_until_done():
            if event.kind == "delta":
                parts.append(event.text)
            elif event.kind == "error":
                raise ApiError(event.status, event.text, _error_kind(event.status))
            elif event.kind == "cancelled":
                raise ApiError(499, "the client closed the request", "invalid_request_error")
            else:
                return "".join(parts), event.finish_reason, event.completion_tokens
    finally:
        watcher.cancel()
        job.cancelled.set()  # a no-op once finished; frees the slot if we left early
    raise ApiError(503, "the generation ended without a result", "server_error")


def _error_kind(status: int) -> str:
    return {400: "invalid_request_error", 504: "timeout"}.get(status, "server_error")


def _sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


def _stream(job: Job, chunks: AsyncIterator[bytes]) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield chunk
            yield b"data: [DONE]\n\n"
        finally:
            # Client gone (the generator is closed) or finished: either way release the slot.
            job.cancelled.set()

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _chat_chunks(
    service: Service, job: Job, completion_id: str, include_usage: bool, tools: bool
) -> AsyncIterator[bytes]:
    created = int(time.time())
    base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": service.model_name}
    usage_field = {"usage": None} if include_usage else {}
    yield _sse(
        {
            **base,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
            **usage_field,
        }
    )
    # With tools the answer is parsed whole (a tool call is not streamable as text).
    text: list[str] = []
    async for event in job.events_until_done():
        if event.kind == "delta":
            if tools:
                text.append(event.text)
            else:
                yield _sse(
                    {
                        **base,
                        "choices": [{"index": 0, "delta": {"content": event.text}, "finish_reason": None}],
                        **usage_field,
                    }
                )
        elif event.kind == "error":
            yield _sse({"error": {"message": event.text, "type": _error_kind(event.status)}})
            return
        elif event.kind == "cancelled":
            return
        else:
            finish = event.finish_reason
            if tools:
                content, calls = parse_tool_calls("".join(text))
                delta: dict[str, Any] = {"content": content} if content else {}
                if calls:
                    delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(calls)]
                    finish = "tool_calls"
                yield _sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}], **usage_field})
            yield _sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}], **usage_field})
            if include_usage:
                yield _sse({**base, "choices": [], "usage": _usage(job, event.completion_tokens).model_dump()})


async def _completion_chunks(
    service: Service, job: Job, completion_id: str, include_usage: bool
) -> AsyncIterator[bytes]:
    created = int(time.time())
    base = {"id": completion_id, "object": "text_completion", "created": created, "model": service.model_name}
    usage_field = {"usage": None} if include_usage else {}
    async for event in job.events_until_done():
        if event.kind == "delta":
            yield _sse({**base, "choices": [{"index": 0, "text": event.text, "finish_reason": None}], **usage_field})
        elif event.kind == "error":
            yield _sse({"error": {"message": event.text, "type": _error_kind(event.status)}})
            return
        elif event.kind == "cancelled":
            return
        else:
            yield _sse(
                {**base, "choices": [{"index": 0, "text": "", "finish_reason": event.finish_reason}], **usage_field}
            )
            if include_usage:
                yield _sse({**base, "choices": [], "usage": _usage(job, event.completion_tokens).model_dump()})


__all__ = ["ApiError", "create_app"]
