"""The HTTP side of `peft-apps serve`: the FastAPI app, its error handlers and middleware (body size, API
key), `/health`, one endpoint per app, and the proxy in front of vLLM. The OpenAI endpoints' request
schemas and their mapping onto scheduler rows are in `openai.py`; the records both share in `served.py`.

    GET  /health                     status, served models, rows waiting and running, the counters
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
from pathlib import Path
from typing import Any

from peft_apps.core.errors import UserError

from .openai import _mount_openai
from .served import ApiError, Limits, Served, _error_body


log = logging.getLogger("peft_apps.serve")


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


def _mount_app(api, app, runs: dict[str, Path], served: Served, limits: Limits, slots) -> None:
    from fastapi.concurrency import run_in_threadpool

    Body = app.serve_request()

    async def endpoint(body: Body):  # type: ignore[valid-type]
        from peft_apps.core.serve.scheduler import Cancel, Cancelled, Closed

        if not runs:
            raise ApiError(404, f"no {app.name} run is served here; start the server with one "
                                f"(`peft-apps serve RUN_DIR`)", code="model_not_found", param="model")
        if not slots.acquire(blocking=False):
            raise ApiError(429, f"the server is busy ({limits.max_app_requests} app requests running); retry later",
                           "rate_limit_error", code="queue_full")
        cancel = Cancel()
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
