"""What the HTTP layer and the OpenAI endpoints share: the server's limits, what one server holds
(`Served`), and errors in OpenAI's shape."""

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


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
    prefill_chunk: int = 2048  # prompt tokens prefilled between two decoding steps while rows decode; 0: whole


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
