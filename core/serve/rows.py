"""A scheduler row and how requests wait for theirs: `Row` (prompt ids, adapter, limits; the tokens it
produced, handed to its `listener` as they come: the streaming side), the scheduler's refusals, and the
completer the app pipelines generate through."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

import torch

from peft_apps.core.engine import BASE
from peft_apps.core.engine.decode import cut_at_stop

log = logging.getLogger("peft_apps.serve")


class QueueFull(Exception):
    """More rows wait than the server takes (`max_waiting`)."""


class Closed(Exception):
    """The server is shutting down and takes no new rows."""


@dataclass(eq=False)
class Row:
    """One sequence to complete. `listener` is called in the worker thread after each new token and once
    at the end (then `finish_reason` is set); it must only hand the row on (e.g. to an event loop)."""
    ids: list[int]
    adapter: str = BASE
    max_new_tokens: int = 16
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    listener: Callable[["Row"], None] | None = None
    produced: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    error: str | None = None
    cancelled: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    generator: torch.Generator | None = None
    # prefill progress: the keys and values of the first `computed` prompt tokens (from the prefix cache, a
    # prefix shared with other rows, or earlier chunks), and passes this row was left out of
    head: list | None = field(default=None, repr=False)
    computed: int = 0
    skipped: int = 0

    def text(self, tokenizer) -> str:
        t = tokenizer.decode(self.produced, skip_special_tokens=True)
        return cut_at_stop(t, self.stop) if self.stop else t

    def _notify(self) -> None:
        if self.listener is not None:
            try:
                self.listener(self)
            except Exception:  # a listener's failure (a closed event loop) never stops the worker
                log.exception("row listener failed")

    def finish(self, reason: str, error: str | None = None) -> None:
        if self.finish_reason is None:
            self.finish_reason, self.error = reason, error
            self.done.set()
            self._notify()


class Cancelled(Exception):
    """The request a row belongs to was cancelled (its client left or its time ran out)."""


def rows_of(requests, listener=None) -> list[Row]:
    """Scheduler rows for the engine's `RowRequest`s."""
    return [Row(ids=list(q.ids), adapter=q.adapter, max_new_tokens=q.max_new_tokens, do_sample=q.do_sample,
                temperature=q.temperature, top_p=q.top_p, stop=list(q.stop), seed=q.seed, listener=listener)
            for q in requests]


class Cancel(threading.Event):
    """A request's cancellation: an Event that also runs the callbacks given to `on_set` when it is set (at
    once if it already is), so that a waiting thread wakes without polling."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []
        self._guard = threading.Lock()

    def on_set(self, callback: Callable[[], None]) -> None:
        with self._guard:
            if not self.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def set(self) -> None:
        with self._guard:
            super().set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


def completer(scheduler, cancel: threading.Event | None = None):
    """A `RowEngine` completer over the scheduler: submits the rows and waits for them (the rows are
    cancelled, and `Cancelled` raised, once `cancel` is set).

    The waiting thread sleeps until one of its rows ends or `cancel` (a `Cancel`) is set. It used to wake
    every 50 ms to look: with 16 requests waiting, those wake-ups took the cores from the worker and made
    its decoding steps 12-14% slower under Python's 5 ms switch interval, about 5% (-8% to +20% over five
    pairs) under the server's 0.5 ms. A plain `threading.Event` as `cancel` is still looked at every 50 ms."""

    def complete(requests) -> list[str]:
        wake = threading.Event()
        rows = rows_of(requests, listener=lambda r: r.finish_reason is not None and wake.set())
        scheduler.submit(rows, force=True)
        on_set = getattr(cancel, "on_set", None)
        if on_set is not None:
            on_set(wake.set)
        poll = 0.05 if cancel is not None and on_set is None else None
        while True:
            wake.clear()
            if cancel is not None and cancel.is_set():
                for x in rows:
                    x.cancelled = True
                raise Cancelled("cancelled")
            if all(r.done.is_set() for r in rows):
                break
            wake.wait(poll)
        failed = [r for r in rows if r.finish_reason in ("error", "cancelled")]
        if failed:
            if failed[0].finish_reason == "cancelled":
                raise Cancelled("cancelled")
            raise RuntimeError(failed[0].error)
        return [r.text(scheduler.tokenizer) for r in rows]

    return complete
