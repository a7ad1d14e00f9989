"""The HTTP side of `peft-apps serve`: OpenAI-compatible endpoints, one endpoint per app, `/health`.

    GET  /health                     status, served models, rows waiting and running
    GET  /v1/models                  the base under its own name and every run under its name
    POST /v1/completions             prompt: text, token ids, or a list of either; stream: server-sent events
    POST /v1/chat/completions        messages through the model's chat template
    POST /v1/apps/<app>/<action>     an app's pipeline (autore extract, codereview review, ...)

Errors are JSON in OpenAI's shape, `{"error": {"message", "type", "code", "param"}}`, never a traceback:
400 for a request that cannot be served (malformed JSON, a prompt longer than the context, max_tokens over
the limit), 404 for a model that is not served, 408 when a request runs past its time, 413 for a body over
the size limit, 429 when the queue is full, 503 while shutting down.

No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations as objects.
"""

import asyncio
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from peft_apps.core.errors import UserError

log = logging.getLogger("peft_apps.serve")


@dataclass
class Limits:
    max_body_bytes: int = 4 << 20
    max_tokens: int = 4096
    timeout_s: float = 600.0
    max_waiting: int = 256
    max_batch: int = 32
    max_app_requests: int = 64
    api_key: str | None = None  # when set, /v1/* needs `Authorization: Bearer <key>`
    prefix_cache_mb: float | None = None  # the prefix cache's budget; None: sized to the machine, 0: off
    prefill_chunk: int = 512  # prompt tokens per prefill pass while rows decode; 0: whole prompts


@dataclass
class Served:
    """What one server holds: the tokenizer, the base's name, each run's folder and app, and how rows are
    generated (`rows(requests, listener)` starts them; `engine(names, cancel)` is the `Engine` API the app
    pipelines run on)."""
    tokenizer: Any
    base: str
    runs: dict[str, Path]
    run_apps: dict[str, str]
    context: int
    start_rows: Callable[[list, Any], list]
    engine: Callable[[list[str], threading.Event], Any]
    load: Callable[[], dict[str, int]]
    adapter_of: Callable[[str], str] = lambda name: name
    owned_by: str = "peft-apps"
    proxy: str | None = None  # the OpenAI endpoints are this server's (vLLM's), passed through
    close: Callable[[], None] = lambda: None
    created: int = field(default_factory=lambda: int(time.time()))


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param


def _error_body(status: int, message: str, kind: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "code": code or str(status), "param": param}}


# ---- request bodies (OpenAI's fields; the ones not listed are ignored) ---------------------------------
class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    logprobs: Any = None
    echo: bool = False


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: Union[str, list[dict[str, Any]], None] = ""


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)


def _text_content(m: ChatMessage) -> str:
    if isinstance(m.content, list):  # content parts: only text is taken
        parts = []
        for p in m.content:
            if p.get("type") != "text":
                raise ApiError(400, f"message content of type {p.get('type')!r} is not supported (text only)",
                               param="messages")
            parts.append(str(p.get("text", "")))
        return "".join(parts)
    return m.content or ""


def build_app(served: Served, limits: Limits):
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    api = FastAPI(title="peft-apps", version=_version(),
                  description="One base model with its adapters: OpenAI-compatible endpoints and the apps' pipelines.")
    api.state.served = served
    app_slots = threading.BoundedSemaphore(limits.max_app_requests)

    # ---- errors and the body limit ----------------------------------------------------------------------
    @api.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
        return JSONResponse(_error_body(exc.status, exc.message, exc.kind, exc.code, exc.param), exc.status,
                            headers=headers)

    @api.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        if first.get("type") == "json_invalid":
            where = ""
            msg = f"the body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg', ''))}"
        else:
            msg = f"{where or 'body'}: {first.get('msg', 'invalid')}" + (f" (and {len(errs) - 1} more)" if len(errs) > 1 else "")
        return JSONResponse(_error_body(400, msg, "invalid_request_error", param=where or None), 400)

    @api.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        return JSONResponse(_error_body(exc.status_code, str(exc.detail), "invalid_request_error"), exc.status_code)

    @api.exception_handler(Exception)
    async def _internal(request, exc: Exception):
        log.exception("request failed")
        return JSONResponse(_error_body(500, f"internal error: {type(exc).__name__}", "server_error"), 500)

    api.add_middleware(_BodyLimit, limit=limits.max_body_bytes)
    if limits.api_key:
        api.add_middleware(_ApiKey, key=limits.api_key)

    # ---- models -------------------------------------------------------------------------------------------
    def model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": served.created, "owned_by": served.owned_by,
                "root": name if name == served.base else str(served.runs[name]),
                "parent": None if name == served.base else served.base, "max_model_len": served.context,
                **({"app": served.run_apps[name]} if name in served.run_apps else {})}

    def adapter_for(model: str) -> str:
        if model == served.base:
            from peft_apps.core.engine import BASE

            return BASE
        if model not in served.runs:
            raise ApiError(404, f"the model {model!r} does not exist; served: {', '.join([served.base, *served.runs])}",
                           code="model_not_found", param="model")
        return served.adapter_of(model)

    @api.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "models": [served.base, *served.runs], **served.load()}

    if served.proxy is not None:
        _mount_proxy(api, served.proxy, limits)
    else:
        _mount_openai(api, served, limits, model_card, adapter_for)
    apps_served: dict[str, dict[str, Path]] = {}
    for name, app_name in served.run_apps.items():
        apps_served.setdefault(app_name, {})[name] = served.runs[name]
    from peft_apps.core.registry import list_apps

    for app in list_apps().values():
        if app.serve_action:
            _mount_app(api, app, apps_served.get(app.name, {}), served, limits, app_slots)
    return api


def _mount_proxy(api, url: str, limits: Limits) -> None:
    """The OpenAI endpoints passed through to the server at `url` (vLLM), streams included."""
    import httpx
    from fastapi import Request
    from fastapi.responses import StreamingResponse

    client = httpx.AsyncClient(base_url=url, timeout=limits.timeout_s)

    async def forward(request: Request):
        upstream = client.build_request(request.method, request.url.path, content=await request.body(),
                                        headers={"content-type": request.headers.get("content-type", "application/json")})
        try:
            resp = await client.send(upstream, stream=True)
        except httpx.HTTPError as e:
            raise ApiError(503, f"the engine behind this server does not answer: {e}", "server_error")
        return StreamingResponse(resp.aiter_raw(), status_code=resp.status_code,
                                 media_type=resp.headers.get("content-type"), background=_Close(resp))

    for path, method in (("/v1/models", "GET"), ("/v1/completions", "POST"), ("/v1/chat/completions", "POST")):
        api.add_api_route(path, forward, methods=[method], include_in_schema=True)


class _Close:
    def __init__(self, resp):
        self.resp = resp

    async def __call__(self):
        await self.resp.aclose()


def _mount_openai(api, served: Served, limits: Limits, model_card, adapter_for) -> None:
    from fastapi.responses import StreamingResponse

    from peft_apps.core.data import render_prompt

    @api.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(n) for n in [served.base, *served.runs]]}

    # ---- completions --------------------------------------------------------------------------------------
    def check(req: _Sampling, prompts: list[list[int]], max_tokens: int) -> None:
        if req.logprobs not in (None, False, 0):
            raise ApiError(400, "logprobs are not supported", param="logprobs")
        if req.echo:
            raise ApiError(400, "echo is not supported", param="echo")
        if max_tokens > limits.max_tokens:
            raise ApiError(400, f"max_tokens is {max_tokens}; this server allows at most {limits.max_tokens}",
                           param="max_tokens")
        for i, p in enumerate(prompts):
            if not p:
                raise ApiError(400, f"prompt {i} is empty", param="prompt")
            if len(p) + max_tokens > served.context:
                raise ApiError(400, f"prompt {i} has {len(p)} tokens; with max_tokens {max_tokens} that is more than "
                                    f"the model's context of {served.context} tokens", param="prompt",
                               code="context_length_exceeded")
        vocab = len(served.tokenizer)
        if any(t < 0 or t >= vocab for p in prompts for t in p):
            raise ApiError(400, f"prompt token ids must lie in 0..{vocab - 1}", param="prompt")

    def stops(req: _Sampling) -> list[str]:
        return [req.stop] if isinstance(req.stop, str) else list(req.stop or [])

    async def run(req: _Sampling, adapter: str, prompts: list[list[int]], max_tokens: int, kind: str):
        from peft_apps.core.engine.rows import RowRequest

        check(req, prompts, max_tokens)
        requests = [RowRequest(ids=p, adapter=adapter, max_new_tokens=max_tokens, do_sample=req.temperature > 0,
                               temperature=req.temperature, top_p=req.top_p, stop=stops(req),
                               seed=None if req.seed is None else req.seed + k)
                    for p in prompts for k in range(req.n)]
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        rows = start(requests, lambda row: loop.call_soon_threadsafe(events.put_nowait, row))
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        if req.stream:
            return StreamingResponse(_stream(rows, events, rid, req.model, kind, served.tokenizer, limits.timeout_s),
                                     media_type="text/event-stream")
        try:
            await asyncio.wait_for(_all_done(rows, events), limits.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(408, f"the request ran past the server's limit of {limits.timeout_s:g} s", code="timeout")
        finally:
            for r in rows:
                r.cancelled = r.finish_reason is None  # a cancelled wait (client gone) cancels its rows
        failed = next((r for r in rows if r.finish_reason == "error"), None)
        if failed is not None:
            raise ApiError(500, f"generation failed: {failed.error}", "server_error")
        prompt_tokens = sum(len(p) for p in prompts)
        completion_tokens = sum(len(r.produced) for r in rows)
        choices = []
        for i, r in enumerate(rows):
            text = r.text(served.tokenizer)
            choices.append({"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                            "finish_reason": r.finish_reason} if kind == "chat" else
                           {"index": i, "text": text, "logprobs": None, "finish_reason": r.finish_reason})
        return {"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion",
                "created": int(time.time()), "model": req.model, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    def start(requests, listener):
        from peft_apps.core.serve.scheduler import Closed, QueueFull

        try:
            return served.start_rows(requests, listener)
        except QueueFull as e:
            raise ApiError(429, f"the server is busy: {e}; retry later", "rate_limit_error", code="queue_full")
        except Closed as e:
            raise ApiError(503, str(e), "server_error", code="shutting_down")

    @api.post("/v1/completions")
    async def completions(req: CompletionRequest):
        adapter = adapter_for(req.model)
        p = req.prompt
        if isinstance(p, str):
            prompts = [p]
        elif p and all(isinstance(x, int) for x in p):
            prompts = [p]
        else:
            prompts = list(p)
        if not prompts:
            raise ApiError(400, "prompt is empty", param="prompt")
        ids = [served.tokenizer(x, add_special_tokens=True)["input_ids"] if isinstance(x, str) else list(x)
               for x in prompts]
        return await run(req, adapter, ids, req.max_tokens or 16, "text")

    @api.post("/v1/chat/completions")
    async def chat(req: ChatRequest):
        adapter = adapter_for(req.model)
        msgs = [{"role": m.role, "content": _text_content(m)} for m in req.messages]
        try:
            text = render_prompt(served.tokenizer, msgs)
        except Exception as e:  # the template's own checks (roles out of order, ...)
            raise ApiError(400, f"the chat template refused the messages: {e}", param="messages")
        ids = served.tokenizer(text, add_special_tokens=False)["input_ids"]
        limit = req.max_completion_tokens or req.max_tokens or max(1, min(limits.max_tokens, served.context - len(ids)))
        return await run(req, adapter, [ids], limit, "chat")


def _mount_app(api, app, runs: dict[str, Path], served: Served, limits: Limits, slots) -> None:
    from fastapi.concurrency import run_in_threadpool

    Body = app.serve_request()

    async def endpoint(body: Body):  # type: ignore[valid-type]
        from peft_apps.core.serve.scheduler import Cancelled, Closed

        if not runs:
            raise ApiError(404, f"no {app.name} run is served here; start the server with one "
                                f"(`peft-apps serve RUN_DIR`)", code="model_not_found", param="model")
        if not slots.acquire(blocking=False):
            raise ApiError(429, f"the server is busy ({limits.max_app_requests} app requests running); retry later",
                           "rate_limit_error", code="queue_full")
        cancel = threading.Event()
        try:
            return await asyncio.wait_for(
                run_in_threadpool(app.serve, lambda names: served.engine(list(names), cancel), runs, body),
                limits.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(408, f"the request ran past the server's limit of {limits.timeout_s:g} s", code="timeout")
        except UserError as e:
            raise ApiError(400, str(e.args[0]) + (f" ({e.hint})" if e.hint else ""))
        except Closed as e:
            raise ApiError(503, str(e), "server_error", code="shutting_down")
        except Cancelled:
            raise ApiError(408, "the request was cancelled", code="cancelled")
        finally:
            cancel.set()
            slots.release()

    endpoint.__name__ = f"{app.name}_{app.serve_action}"
    api.add_api_route(f"/v1/apps/{app.name}/{app.serve_action}", endpoint, methods=["POST"],
                      summary=f"{app.name}: {app.summary}", tags=["apps"])


async def _all_done(rows, events: asyncio.Queue) -> None:
    while any(r.finish_reason is None for r in rows):
        await events.get()


async def _stream(rows, events: asyncio.Queue, rid: str, model: str, kind: str, tokenizer, timeout: float):
    """Server-sent events: each row's new text as it is decoded (held back while it may be the start of a
    stop string or an incomplete character), its finish reason, then `[DONE]`. The rows are cancelled
    when the client goes away."""
    sent = [""] * len(rows)
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    created = int(time.time())

    def chunk(i: int, text: str | None, reason: str | None, first: bool = False) -> str:
        if kind == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else (
                {"content": text} if text else {})
            choice = {"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": i, "text": text or "", "logprobs": None, "finish_reason": reason}
        return f"data: {json.dumps({'id': rid, 'object': obj, 'created': created, 'model': model, 'choices': [choice]})}\n\n"

    deadline = time.monotonic() + timeout
    reported = [False] * len(rows)
    try:
        if kind == "chat":
            for i in range(len(rows)):
                yield chunk(i, None, None, first=True)
        while True:
            for i, r in enumerate(rows):
                if reported[i]:
                    continue
                # the reason first: the worker sets it after the row's last token, so a finished row's text
                # read after it is whole (read before it, the last token could be missing from what is sent)
                reason = r.finish_reason
                if reason is None:
                    safe = _safe_prefix(tokenizer.decode(r.produced, skip_special_tokens=True), r.stop)
                else:
                    safe = r.text(tokenizer)
                if len(safe) > len(sent[i]) and safe.startswith(sent[i]):
                    yield chunk(i, safe[len(sent[i]):], None)
                    sent[i] = safe
                if reason is not None:
                    if reason == "error":
                        yield f"data: {json.dumps(_error_body(500, f'generation failed: {r.error}', 'server_error'))}\n\n"
                    yield chunk(i, None, reason if reason in ("stop", "length") else "stop")
                    reported[i] = True
            if all(reported):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                yield f"data: {json.dumps(_error_body(408, 'the request ran past the server limit', 'invalid_request_error', 'timeout'))}\n\n"
                break
            try:
                await asyncio.wait_for(events.get(), left)
            except asyncio.TimeoutError:
                continue
        yield "data: [DONE]\n\n"
    finally:
        for r in rows:
            if r.finish_reason is None:
                r.cancelled = True


def _safe_prefix(text: str, stops: list[str]) -> str:
    """The part of a running row's text that can be sent: no trailing replacement character (a character
    whose bytes are not all decoded yet) and nothing that could still become a stop string."""
    text = text.rstrip("\ufffd")
    cut = len(text)
    for s in stops:
        j = text.find(s)
        if j != -1:
            cut = min(cut, j)
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                cut = min(cut, len(text) - k)
                break
    return text[:cut]


class _BodyLimit:
    """413 for a request body over `limit` bytes: by its Content-Length, or counted as it arrives."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _send_json(send, 413, _error_body(413, f"the request body has {int(length)} bytes; the "
                                                                f"limit is {self.limit}", "invalid_request_error"))
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _send_json(send, 413, _error_body(413, f"the request body is over the limit of {self.limit} bytes",
                                                    "invalid_request_error"))


class _ApiKey:
    """401 for a /v1 request without `Authorization: Bearer <key>` (what OpenAI clients send)."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key

    async def __call__(self, scope, receive, send):
        import hmac

        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.key}".encode()):
                return await _send_json(send, 401, _error_body(401, "missing or wrong API key (Authorization: Bearer "
                                                                    "KEY)", "invalid_request_error", "invalid_api_key"))
        return await self.app(scope, receive, send)


class _TooLarge(Exception):
    pass


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("peft-apps")
    except PackageNotFoundError:
        return "0"
