"""`peft-apps serve`: the server's flags, handed to `core.serve`."""

from __future__ import annotations

import os
from typing import Optional

import typer

from peft_apps.core.errors import UserError

from .common import _prepare, console


def serve_cmd(
    runs: Optional[list[str]] = typer.Argument(None, metavar="RUN_DIR", help="run folders to serve, each "
                                               "under its folder's name, or NAME=DIR; all on one base model"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(8000, "--port", "-p", min=1, max=65535, help="port to listen on"),
    base: Optional[str] = typer.Option(None, "--base", help="the base model (default: the runs'); alone, serves "
                                       "just that model"),
    engine: str = typer.Option("local", "--engine", help="local: this tool's batching engine; vllm: vLLM's "
                               "OpenAI server (GPU, the [vllm] extra) with the app endpoints in front"),
    max_batch: int = typer.Option(32, "--max-batch", min=1, help="rows decoded together at most"),
    max_waiting: int = typer.Option(256, "--max-waiting", min=1, help="rows waiting at most; past it: 429"),
    max_tokens: int = typer.Option(4096, "--max-tokens", min=1, help="the largest max_tokens a request may ask"),
    timeout: float = typer.Option(600.0, "--timeout", min=1, help="seconds a request may run; past it: 408"),
    max_body_mb: float = typer.Option(4.0, "--max-body-mb", min=0.001, help="the largest request body; past it: 413"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32, bfloat16, ... (default: the runtime's choice)"),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", metavar="VAR", help="require this environment "
                                              "variable's value as the API key (Authorization: Bearer KEY) on /v1/*"),
    prefix_cache_mb: Optional[float] = typer.Option(None, "--prefix-cache-mb", min=0, help="memory for the KV of "
                                                    "prompt prefixes kept across requests, evicted least recently "
                                                    "used (default: an eighth of the free RAM or a quarter of the "
                                                    "free GPU memory, at most 4096; 0: off)"),
    prefill_chunk: int = typer.Option(2048, "--prefill-chunk", min=0, help="prompt tokens prefilled between two "
                                      "decoding steps while other rows decode; a longer prompt is split into chunks "
                                      "of this size, so it does not stall them (0: whole prompts)"),
) -> None:
    """Serve a base model and adapters: OpenAI-compatible `/v1/models`, `/v1/completions` and
    `/v1/chat/completions` (the run's name as `model`), one endpoint per app (`/v1/apps/autore/extract`,
    `/v1/apps/codereview/review`, `/v1/apps/testgen/generate`, `/v1/apps/exam/answer`; schema at `/docs`)
    and `/health`. Requests arriving together are generated together, adapters mixed in one batch.
    Ctrl-C or SIGTERM finishes the requests in flight, then exits."""
    from peft_apps.core.serve import Limits, serve

    key = None
    if api_key_env is not None:
        key = os.environ.get(api_key_env)
        if not key:
            raise UserError(f"--api-key-env {api_key_env}: that environment variable is not set")
    _prepare()
    limits = Limits(max_body_bytes=int(max_body_mb * (1 << 20)), max_tokens=max_tokens, timeout_s=timeout,
                    max_waiting=max_waiting, max_batch=max_batch, api_key=key, prefix_cache_mb=prefix_cache_mb,
                    prefill_chunk=prefill_chunk)
    serve(list(runs or []), host=host, port=port, base=base, limits=limits, engine=engine, dtype=dtype,
          console=console)
