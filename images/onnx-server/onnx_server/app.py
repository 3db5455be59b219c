"""The HTTP API: OpenAI's /v1/chat/completions, /v1/completions, /v1/models and /v1/models/{id},
plus /health, /ready and /metrics. Every client mistake is a 4xx with an OpenAI-style error body."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from onnx_server import guidance, schemas, sse, text
from onnx_server.access import RequestRecord
from onnx_server.chat import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    ChatTemplate,
    TemplateFailure,
    load_template,
    parse_tool_calls,
)
from onnx_server.engine import Engine, Event, Job, NotReady, Overloaded, Sampling, special_tokens
from onnx_server.errors import ApiError, error_kind, error_response
from onnx_server.guard import Guard
from onnx_server.metrics import Metrics
from onnx_server.settings import Settings
from onnx_server.validation import describe

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
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorResponse} for code in (400, 401, 404, 408, 413, 429, 503, 504)
}
log = logging.getLogger("onnx_server.api")
SHUTTING_DOWN = "the server is shutting down; retry the request"


class Service:
    """What the routes share: settings, engine, template, metrics, and the requests in flight."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.model_name = metrics.model
        self.created = int(time.time())
        self.engine = Engine.from_settings(settings, metrics)
        self.template = ChatTemplate(load_template(settings.model), _template_tokens(settings.model))
        self.special = set(special_tokens(settings.model))
        self.draining = asyncio.Event()  # set when shutdown starts: no new work, bodies still arriving: 503
        self.jobs: set[Job] = set()

    def end_requests(self) -> None:
        """The drain deadline: every request still generating ends now with an error its client
        sees (a 503, or an error event and [DONE]), before the server cancels what is left."""
        for job in list(self.jobs):
            job.events.put_nowait(Event("error", text=SHUTTING_DOWN, status=503, code="server_shutdown"))
            job.cancelled.set()

    def card(self) -> schemas.ModelCard:
        return schemas.ModelCard(id=self.model_name, created=self.created)

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise ApiError(
                404,
                f"model {name!r} does not exist; this server serves {self.model_name!r}",
                code="model_not_found",
                param="model",
            )

    def budget(self, prompt_ids: list[int], requested: int | None, what: str) -> int:
        """max_tokens for a prompt, or a 400 in OpenAI's words when the two do not fit the context
        (client libraries match them to raise their context-window errors)."""
        context = self.engine.context_length
        if not prompt_ids:
            raise ApiError(400, "the prompt is empty", param="prompt", code="empty_prompt")
        prompt = len(prompt_ids)
        if prompt >= context:
            raise ApiError(
                400,
                f"This model's maximum context length is {context} tokens. However, your {what} resulted in "
                f"{prompt} tokens. Please reduce the length of the {what}.",
                param=what,
                code="context_length_exceeded",
            )
        room = context - prompt
        if requested is not None and requested > room:
            raise ApiError(
                400,
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{prompt + requested} tokens ({prompt} in the {what}, {requested} in the completion; "
                f"max_tokens can be at most {room}). Please reduce the length of the {what} or completion.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        kv = self.engine.kv
        if kv is not None:  # what the running requests' cache may hold at once (kv_budget.py)
            needed = prompt + (requested if requested is not None else 1)
            if needed > kv.capacity:
                raise ApiError(
                    400,
                    f"This server's maximum context length is {kv.capacity} tokens (the size of its KV "
                    "cache: --kv-cache-gib, or what its memory limit leaves). However, you requested "
                    f"{needed} tokens ({prompt} in the {what}, {needed - prompt} in the completion). "
                    f"Please reduce the length of the {what} or completion.",
                    param="max_tokens" if requested is not None and prompt < kv.capacity else what,
                    code="context_length_exceeded",
                )
            room = min(room, kv.capacity - prompt)
        return requested if requested is not None else min(room, self.settings.default_max_tokens)


def _template_tokens(model_dir: Any) -> dict[str, str]:
    config = model_dir / "tokenizer_config.json"
    if not config.is_file():
        return {}
    data = json.loads(config.read_text())
    return {k: v for k, v in data.items() if k.endswith("_token") and isinstance(v, str)}


def _sampling(body: schemas._Sampling, guided: guidance.Guidance | None) -> Sampling:
    temperature = 1.0 if body.temperature is None else body.temperature
    return Sampling(
        temperature=temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
        seed=body.seed,
        guidance=guided,
    )


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
        return error_response(error.status, error.message, error.kind, error.param, error.code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        message, param, code = describe(list(error.errors()), error.body)
        return error_response(400, message, "invalid_request_error", param, code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return error_response(error.status_code, str(error.detail), kind)

    app.add_middleware(Guard, settings=settings, metrics=service.metrics, draining=service.draining)

    @app.get("/health", response_model=schemas.Health)
    async def health() -> schemas.Health:
        return schemas.Health(status="ok")

    @app.get("/ready", response_model=schemas.Health, responses={503: {"model": schemas.ErrorResponse}})
    async def ready() -> Any:
        if service.engine.ready.is_set() and not service.draining.is_set():
            return schemas.Health(status="ready")
        reason = service.engine.load_error or ("shutting down" if service.draining.is_set() else "the model is loading")
        return error_response(503, reason, "service_unavailable")

    if settings.metrics_port == 0:

        @app.get("/metrics", response_class=Response, include_in_schema=False)
        async def metrics_endpoint() -> Response:
            return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", response_model=schemas.ModelList)
    async def models() -> schemas.ModelList:
        return schemas.ModelList(data=[service.card()])

    @app.get("/v1/models/{model_id:path}", response_model=schemas.ModelCard)
    async def model(model_id: str) -> schemas.ModelCard:
        service.check_model(model_id)
        return service.card()

    @app.post("/v1/chat/completions", response_model=schemas.ChatCompletion, responses=STREAMED)
    async def chat(body: schemas.ChatCompletionRequest, request: Request) -> Any:
        return await _chat(service, body, request)

    @app.post("/v1/completions", response_model=schemas.Completion, responses=STREAMED)
    async def completions(body: schemas.CompletionRequest, request: Request) -> Any:
        _common_checks(service, body)
        job = await _job(
            service, request, body.prompt_text(), max_tokens=body.max_tokens, body=body, guided=None, what="prompt"
        )
        completion_id = f"cmpl-{uuid.uuid4().hex}"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            frames = sse.CompletionFrames(job, _chunk_base(service, completion_id, "text_completion"), include_usage)
            return sse.stream(job, _record(request), frames, service.jobs)
        text_out, reason, completion_tokens = await _collect(service, job, request)
        return schemas.Completion(
            id=completion_id,
            created=int(time.time()),
            model=service.model_name,
            choices=[schemas.CompletionChoice(index=0, text=text_out, finish_reason=reason)],  # type: ignore[arg-type]
            usage=sse.usage(job, completion_tokens),
        )

    return app


async def _chat(service: Service, body: schemas.ChatCompletionRequest, request: Request) -> Any:
    _common_checks(service, body)
    for index, message in enumerate(body.messages):
        media = message.media_part()
        if media is not None:
            part, kind = media
            raise ApiError(
                400,
                f"messages.{index}.content.{part}: {kind} parts are not supported; this model reads text only "
                "(send text parts)",
                param=f"messages.{index}.content.{part}",
                code="unsupported_content",
            )
    declared = body.tool_list()
    tool_choice = body.tool_choice_value()
    if isinstance(tool_choice, schemas.NamedToolChoice):
        names = [tool.function.name for tool in declared or []]
        if tool_choice.function.name not in names:
            raise ApiError(
                400,
                f"tool_choice names the function {tool_choice.function.name!r}, which is not among the tools "
                f"({', '.join(map(repr, names)) or 'none declared'})",
                param="tool_choice",
                code="invalid_value",
            )
    rendered = declared if declared and tool_choice != "none" else None
    tools = [tool.model_dump(exclude_none=True) for tool in rendered] if rendered else None
    messages = [_message_dict(m) for m in body.messages]
    try:
        prompt = service.template.render(messages, tools)
    except TemplateFailure as error:
        raise ApiError(400, str(error), param="messages") from None
    guided = guidance.for_chat(
        body.response_format,
        rendered,
        tool_choice,
        service.special,
        parallel_tool_calls=body.parallel_tool_calls is not False,
    )
    max_tokens = body.max_completion_tokens or body.max_tokens
    job = await _job(
        service,
        request,
        prompt,
        max_tokens=max_tokens,
        body=body,
        guided=guided,
        what="messages",
        markers=(TOOL_CALL_OPEN, TOOL_CALL_CLOSE) if tools else (),
    )
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    legacy = body.functions is not None
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        base = _chunk_base(service, completion_id, "chat.completion.chunk")
        frames = sse.ChatFrames(job, base, include_usage, tools=bool(tools), legacy=legacy)
        return sse.stream(job, _record(request), frames, service.jobs)
    text_out, reason, completion_tokens = await _collect(service, job, request)
    content, calls = parse_tool_calls(text_out) if tools else (text_out, [])
    if calls and legacy:
        message = schemas.ResponseMessage(
            content=content or None, function_call=schemas.FunctionCall.model_validate(calls[0]["function"])
        )
        finish = "function_call"
    else:
        message = schemas.ResponseMessage(
            content=content or (None if calls else ""),
            tool_calls=[schemas.ToolCall.model_validate(c) for c in calls] or None,
        )
        finish = "tool_calls" if calls else reason
    return schemas.ChatCompletion(
        id=completion_id,
        created=int(time.time()),
        model=service.model_name,
        choices=[schemas.ChatChoice(index=0, message=message, finish_reason=finish)],  # type: ignore[arg-type]
        usage=sse.usage(job, completion_tokens),
    )


def _message_dict(message: schemas.Message) -> dict[str, Any]:
    # The legacy "function" role is a tool result; a legacy function_call is one tool call.
    role = "tool" if message.role == "function" else message.role
    data: dict[str, Any] = {"role": role, "content": message.text()}
    if message.name:
        data["name"] = message.name
    if message.tools is not None:
        data["tools"] = message.tools if isinstance(message.tools, str) else json.dumps(message.tools)
    calls = [c.model_dump(exclude={"function": {"parsed_arguments"}}) for c in message.tool_calls or []]
    if message.function_call is not None:
        function = message.function_call.model_dump(exclude={"parsed_arguments"})
        calls.append({"id": f"call_{len(calls)}", "type": "function", "function": function})
    if calls:
        data["tool_calls"] = calls
    if message.tool_call_id:
        data["tool_call_id"] = message.tool_call_id
    return data


def _common_checks(service: Service, body: schemas._Sampling) -> None:
    service.check_model(body.model)
    refused = body.refused()
    if refused is not None:
        param, why = refused
        raise ApiError(400, why, param=param, code="unsupported_parameter")
    found = text.first_problem(body.model_dump(by_alias=True, exclude_none=True))
    if found is not None:
        path, why = found
        raise ApiError(400, f"{path}: {why}", param=path, code="invalid_value")
    if service.draining.is_set():
        raise ApiError(503, SHUTTING_DOWN, "service_unavailable", code="server_shutdown")
    if not service.engine.ready.is_set():
        raise ApiError(503, "the model is loading; retry shortly", "service_unavailable")


async def _job(
    service: Service,
    request: Request,
    prompt: str,
    *,
    max_tokens: int | None,
    body: schemas._Sampling,
    guided: guidance.Guidance | None,
    what: str,
    markers: tuple[str, ...] = (),
) -> Job:
    prompt_ids = await service.engine.encode(prompt)
    job = Job(
        prompt=prompt,
        prompt_ids=prompt_ids,
        max_tokens=service.budget(prompt_ids, max_tokens, what),
        sampling=_sampling(body, guided),
        stop=body.stop_list(),
        deadline=time.perf_counter() + service.settings.request_timeout,
        loop=asyncio.get_running_loop(),
        markers=markers,
    )
    if service.settings.log_prompts:
        log.info("prompt", extra={"prompt": prompt})
    try:
        service.engine.submit(job)
    except Overloaded:
        raise ApiError(429, "the server is at capacity; retry shortly", "rate_limit_error", code="overloaded") from None
    except NotReady:
        raise ApiError(503, "the model is loading; retry shortly", "service_unavailable") from None
    service.jobs.add(job)
    request.state.job = job
    _record(request).prompt_tokens = len(prompt_ids)
    return job


def _chunk_base(service: Service, completion_id: str, kind: str) -> dict[str, Any]:
    """What every chunk of a stream repeats."""
    return {"id": completion_id, "object": kind, "created": int(time.time()), "model": service.model_name}


def _record(request: Request) -> RequestRecord:
    """The Guard's record of this request (its access log line), or a detached one without it."""
    found = request.scope.get("state", {}).get("record")
    return found if isinstance(found, RequestRecord) else RequestRecord()


async def _observed(job: Job, record: RequestRecord) -> AsyncIterator[Event]:
    """A job's events, noting in the request's record how the generation ended."""
    async for event in job.events_until_done():
        sse.note(record, event)
        yield event


async def _collect(service: Service, job: Job, request: Request) -> tuple[str, str, int]:
    """Wait for the whole answer; a client that goes away cancels it."""
    parts: list[str] = []

    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(0.2)
        job.cancelled.set()

    watcher = asyncio.create_task(watch())
    try:
        async for event in _observed(job, _record(request)):
            if event.kind == "delta":
                parts.append(event.text)
            elif event.kind == "error":
                kind = "service_unavailable" if event.status == 503 else error_kind(event.status)
                raise ApiError(event.status, event.text, kind, code=event.code)
            elif event.kind == "cancelled":
                raise ApiError(499, "the client closed the request", "invalid_request_error")
            else:
                return "".join(parts), event.finish_reason, event.completion_tokens
    finally:
        watcher.cancel()
        job.cancelled.set()  # a no-op once finished; frees the slot if we left early
        service.jobs.discard(job)
    raise ApiError(503, "the generation ended without a result", "server_error")


__all__ = ["ApiError", "Service", "create_app"]
