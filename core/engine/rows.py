"""An engine whose generation happens elsewhere: the `Engine` API the pipelines and `PrefixTree` call,
with every prompt sent whole, as token ids, to a row completer.

Two completers use it: the server's scheduler (`peft-apps serve` runs the apps' pipelines over it, so
rows of concurrent requests share the scheduler's batches) and an OpenAI-compatible endpoint
(`remote.py`: app commands and pipelines with `--endpoint`). The pipelines build their prompts exactly as
in-process (same template, same ids); the prefix API keeps only ids, since sharing a prefix's cache is
the completer's business (the scheduler finds shared prefixes among the rows it holds).

    engine = RowEngine(tokenizer, ["a", "b"], complete, context_length=4096)
    engine.generate(["prompt"], adapter="b")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from peft_apps.core.data import render_prompt

from .options import GenerationOptions, Prefix, adapter_per_row


@dataclass
class RowRequest:
    """One prompt to complete: its ids, the adapter's name, and the settings of its row."""
    ids: list[int]
    adapter: str
    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.95
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


def row_requests(rows: Sequence[Sequence[int]], adapters: Sequence[str], o: GenerationOptions,
                 limits: Sequence[int] | None = None) -> list[RowRequest]:
    """The rows of one call with `o`'s settings: per-row seeds from `row_seeds`, else drawn from `seed`."""
    n = len(rows)
    seeds: list[int | None] = list(o.row_seeds) if o.row_seeds is not None else (
        GenerationOptions.spread_seeds(o.seed, n) if o.seed is not None and o.do_sample else [None] * n)
    return [RowRequest(list(r), a, limits[i] if limits else o.max_new_tokens, o.do_sample, o.temperature, o.top_p,
                       list(o.stop), seeds[i]) for i, (r, a) in enumerate(zip(rows, adapters))]


class RowEngine:
    """`Engine`'s generation API over `complete(requests) -> texts` (see the module docstring)."""

    shared_attention = False

    def __init__(self, tokenizer, adapters: Sequence[str], complete: Callable[[list[RowRequest]], list[str]],
                 context_length: int):
        self.tokenizer = tokenizer
        self.adapters = list(adapters)
        self.complete = complete
        self.context_length = context_length
        self.decode_stats = {"forwards": 0, "tokens": 0, "drafted": 0, "accepted": 0}

    def _names(self, adapter: str | Sequence[str | None] | None, n: int) -> list[str]:
        return adapter_per_row(adapter, n, self.adapters)

    def chat(self, conversations: Sequence[list[dict[str, str]]], adapter: str | Sequence[str] | None = None,
             **opts: Any) -> list[str]:
        return self.generate([render_prompt(self.tokenizer, c) for c in conversations], adapter=adapter, **opts)

    def generate(self, prompts: Sequence[str], adapter: str | Sequence[str | None] | None = None,
                 options: GenerationOptions | None = None, **opts: Any) -> list[str]:
        o = options or GenerationOptions(**opts)
        names = self._names(adapter, len(prompts))
        enc = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        return self.complete(row_requests(enc, names, o)) if enc else []

    def generate_ids(self, rows: Sequence[Sequence[int]], adapter: str | None = None,
                     options: GenerationOptions | None = None, **opts: Any) -> list[str]:
        o = options or GenerationOptions(**opts)
        return self.complete(row_requests(rows, self._names(adapter, len(rows)), o)) if rows else []

    # ---- the prefix API: ids only ---------------------------------------------------------------------
    def encode_prefix(self, prefix_ids: Sequence[int], adapter: str | None = None) -> Prefix:
        return Prefix(list(prefix_ids))

    def encode_prefixes(self, rows: Sequence[Sequence[int]], adapter: str | None = None, **_: Any) -> list[Prefix]:
        return [Prefix(list(r)) for r in rows]

    def extend_prefixes(self, items: Sequence[tuple[Prefix, Sequence[int]]], adapter: str | None = None,
                        **_: Any) -> list[Prefix]:
        return [Prefix(p.ids + list(more)) for p, more in items]

    def generate_prefixed(self, rows: Sequence[tuple[Any, Sequence[int]]], prefixes: dict[Any, Prefix],
                          adapter: str | None = None, options: GenerationOptions | None = None,
                          max_new_tokens_per_row: Sequence[int] | None = None, **opts: Any) -> list[str]:
        o = options or GenerationOptions(**opts)
        ids = [prefixes[key].ids + list(suffix) for key, suffix in rows]
        return self.complete(row_requests(ids, self._names(adapter, len(ids)), o, max_new_tokens_per_row)) \
            if ids else []
