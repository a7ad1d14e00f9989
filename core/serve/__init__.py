"""`peft-apps serve RUN_DIR...`: one base model with every given adapter, behind OpenAI-compatible
endpoints and one endpoint per app (see `api.py`), generation batched across requests and adapters by
the scheduler (`scheduler.py`); or, with `--engine vllm`, vLLM's OpenAI server for the base and the runs
as LoRA modules, the app endpoints in front of it (`vllm.py`).

    serve(["runs/sft-demo", "review=runs/codereview-lora"], host="127.0.0.1", port=8000)

One concern per module:

    __init__.py   the local server's wiring, uvicorn
    runs.py       the runs given (names, one shared base), the port
    scheduler.py  continuous batching over the engine: rows join between steps, mixed adapters; the worker
    admission.py  the scheduler's admission and prefill: shared prefixes, the prefix cache, chunked prefill
    batch.py      the running batch: its KV cache in preallocated row slots (rows join and leave without a copy)
    rows.py       a scheduler row and its listener (streaming), the completer the app pipelines call
    api.py        the FastAPI app: errors, middleware, /health, /v1/apps/..., the proxy in front of vLLM
    openai.py     /v1/models, /v1/completions, /v1/chat/completions: schemas, rows, responses and streams
    served.py     what those two share: the limits, what a server holds, errors in OpenAI's shape
    vllm.py       the vLLM command line from the recipes, the front server's proxy
"""

from __future__ import annotations

from typing import Any

from peft_apps.core.errors import UserError

from .api import build_app
from .runs import Run, check_port, read_runs
from .served import Limits, Served

__all__ = ["Limits", "Run", "Served", "build_app", "check_port", "local_served", "read_runs", "serve"]


def local_served(runs: list[Run], base: str | None, limits: Limits, dtype: str | None = None) -> Served:
    """The engine with every run's adapter, and the scheduler over it, started."""
    from peft_apps.core.engine import Engine
    from peft_apps.core.engine.rows import RowEngine

    from .scheduler import Scheduler, completer, rows_of

    if not runs and base is None:
        raise UserError("nothing to serve: give run folders (peft-apps serve RUN_DIR ...) or --base MODEL")
    engine = Engine.from_pretrained(base, {r.name: r.folder for r in runs} or None, dtype=dtype)
    scheduler = Scheduler(engine, max_batch=limits.max_batch, max_waiting=limits.max_waiting,
                          prefix_cache_mb=limits.prefix_cache_mb, prefill_chunk=limits.prefill_chunk).start()

    def start_rows(requests, listener):
        rows = rows_of(requests, listener)
        scheduler.submit(rows)
        return rows

    return Served(
        tokenizer=engine.tokenizer, base=base or runs[0].model.base, runs={r.name: r.folder for r in runs},
        run_apps={r.name: r.recipe.app for r in runs}, context=engine.context_length, start_rows=start_rows,
        engine=lambda names, cancel: RowEngine(engine.tokenizer, names, completer(scheduler, cancel),
                                               engine.context_length),
        load=lambda: {**scheduler.load, **scheduler.report()},
        close=scheduler.close)


SWITCH_INTERVAL = 0.0005  # seconds: how long a Python thread holds the GIL while another waits (default 0.005)


def serve(items: list[str], host: str = "127.0.0.1", port: int = 8000, base: str | None = None,
          limits: Limits | None = None, engine: str = "local", dtype: str | None = None,
          console: Any = None, vllm_args: list[str] | None = None) -> None:
    """Check the runs and the port, load, and serve until Ctrl-C or SIGTERM (requests in flight finish)."""
    import uvicorn

    limits = limits or Limits()
    runs = read_runs(items)
    check_port(host, port)
    if engine == "vllm":
        from .vllm import vllm_served

        served = vllm_served(runs, base, host, port, limits, vllm_args or [], console)
    elif engine == "local":
        if console is not None:
            with console.status(f"loading {base or (runs[0].model.base if runs else '')} and {len(runs)} adapter(s)"):
                served = local_served(runs, base, limits, dtype)
        else:
            served = local_served(runs, base, limits, dtype)
    else:
        raise UserError(f"--engine must be local or vllm, got {engine!r}")
    api = build_app(served, limits)
    if console is not None:
        names = ", ".join(f"{r.name} ({r.recipe.app})" for r in runs) or "(no adapters)"
        console.print(f"[bold]serving[/] {served.base} with {names} on http://{host}:{port}  "
                      f"(OpenAPI: /docs; Ctrl-C stops after the requests in flight)", highlight=False)
    config = uvicorn.Config(api, host=host, port=port, log_level="warning", timeout_graceful_shutdown=None)
    if engine == "local":
        import sys

        # The model's worker thread takes the GIL back between the operations of every forward pass; request
        # threads parsing and tokenizing a burst of new requests held it for up to Python's default 5 ms at a
        # time, and a pass that takes 40 ms alone took 480 ms amid 15 arrivals (small model, pull-request mix)
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
    try:
        _Server(config).run()
    finally:
        served.close()


def _server_class():
    import contextlib
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, except that after a graceful stop (Ctrl-C, SIGTERM: the requests in flight finish)
        the process exits 0 instead of uvicorn raising the signal again; a second Ctrl-C stops at once."""

        @contextlib.contextmanager
        def capture_signals(self):
            sigs = (signal.SIGINT, signal.SIGTERM)
            previous = {s: signal.signal(s, self.handle_exit) for s in sigs}
            try:
                yield
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

    return Server


def _Server(config):
    return _server_class()(config)
