"""The OpenAI endpoints: `/v1/models`, `/v1/completions` and `/v1/chat/completions`, their request schemas
(OpenAI's fields; the ones not listed are ignored), the checks a request passes, the mapping of a request
onto scheduler rows, and the response: whole, or as server-sent events while the rows decode.

No `from __future__ import annotations` here: FastAPI and pydantic read the annotations as objects.
"""

import asyncio
import json
import time
import uuid
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from .served import ApiError, Limits, Served, _error_body


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
