"""The engine: one base model, several named adapters, batched generation (see the package docstring)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Sequence

import torch

from peft_apps.core.config import ModelConfig
from peft_apps.core.data import render_prompt

from .attention import install_attention
from .caches import (cache_of, encode_after, encode_batched, grouped_by_root, left_pad, private_batch, root_of,
                     sliding_window, stack_prefix_caches)
from .decode import PrefixDecoder, cut_at_stop, stop_ids
from .loading import load
from .options import BASE, GenerationOptions, Prefix, adapter_per_row
from .scope import AdapterScope


class Engine:
    def __init__(self, model, tokenizer, adapters: Sequence[str] = (), prefix_cache_mb: float | None = None,
                 batched_lora: bool = True):
        from .lora_batch import install_lora_batching
        from .matmuls import install_matmuls
        from .prefix_cache import PrefixCache, default_budget_mb

        self.model = model
        self.tokenizer = tokenizer
        self.adapters = list(adapters)
        self.model.eval()
        self.shared_attention = install_attention(self.model)
        if batched_lora:  # rows of several LoRA adapters in one pass: two batched matmuls per layer
            install_lora_batching(self.model)
            install_matmuls(self.model)
        # the KV of root prefixes (`encode_prefixes`) kept across calls: a review's instructions, a question
        # asked again; None sizes the budget to the machine, 0 turns it off
        budget = default_budget_mb(self.device) if prefix_cache_mb is None else prefix_cache_mb
        self.prefix_cache = PrefixCache(int(budget * (1 << 20)))
        # decoding counters of the prefix-cache path: forward passes, tokens produced, drafts made/accepted
        self.decode_stats = {"forwards": 0, "tokens": 0, "drafted": 0, "accepted": 0}

    # ---- loading -----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, base: str | ModelConfig | None = None,
                        adapters: str | Path | dict[str, str | Path] | None = None,
                        quantize: bool | None = None, dtype: str | None = None,
                        prefix_cache_mb: float | None = None) -> "Engine":
        """`base`: hub id, path, `builtin:*` or a ModelConfig; None takes it from the first adapter's recipe.

        `adapters`: one folder, or {name: folder}. `quantize` defaults to the recipe's setting; `dtype`
        ("float32", "bfloat16", ...) to the runtime's choice (bf16 on a GPU that has it, fp32 on a CPU).
        `prefix_cache_mb`: the budget of the prefix cache kept across calls (None: sized to the machine;
        0: off).
        """
        return cls(*load(base, adapters, quantize, dtype), prefix_cache_mb=prefix_cache_mb)

    @classmethod
    @contextlib.contextmanager
    def borrow(cls, model, tokenizer):
        """An engine over a model someone else owns (the trainer's, between steps): eval mode, the KV cache
        on and the engine's attention routing for the duration; the model's mode, cache setting and
        attention implementation are put back afterwards, so training goes on exactly as before."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        was_training, use_cache = model.training, base.config.use_cache
        impl = getattr(base.config, "_attn_implementation", None)
        active = getattr(model, "active_adapter", None) if hasattr(model, "peft_config") else None
        try:
            base.config.use_cache = True
            yield cls(model, tokenizer, [active] if isinstance(active, str) else [], batched_lora=False)
        finally:
            if impl is not None and base.config._attn_implementation != impl:
                base.set_attn_implementation(impl)
            base.config.use_cache = use_cache
            model.train(was_training)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def context_length(self) -> int:
        """The longest sequence (prompt and output, in tokens) the model takes."""
        cfg = self.model.config
        return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 4096)

    # ---- generation --------------------------------------------------------------------------
    def chat(self, conversations: Sequence[list[dict[str, str]]], adapter: str | Sequence[str] | None = None,
             **opts: Any) -> list[str]:
        prompts = [render_prompt(self.tokenizer, c) for c in conversations]
        return self.generate(prompts, adapter=adapter, **opts)

    def generate(self, prompts: Sequence[str], adapter: str | Sequence[str | None] | None = None,
                 options: GenerationOptions | None = None, **opts: Any) -> list[str]:
        """Complete each rendered prompt; returns the generated text only (no prompt, no EOS)."""
        o = options or GenerationOptions(**opts)
        n = len(prompts)
        if n == 0:
            return []
        per_row = adapter_per_row(adapter, n, self.adapters)
        enc = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        return self._batched(enc, per_row, o)

    def generate_ids(self, rows: Sequence[Sequence[int]], adapter: str | None = None,
                     options: GenerationOptions | None = None, **opts: Any) -> list[str]:
        """Like `generate`, from token ids (no re-tokenization)."""
        o = options or GenerationOptions(**opts)
        default = self.adapters[0] if self.adapters else BASE
        return self._batched([list(r) for r in rows], [adapter or default] * len(rows), o)

    def _batched(self, enc: list[list[int]], per_row: list[str], o: GenerationOptions) -> list[str]:
        n = len(enc)
        order = sorted(range(n), key=lambda i: len(enc[i]))
        out: list[str] = [""] * n
        # peft's prompt-learning generation counts left padding as positions: such rows batch only with rows of
        # their own length (no padding), so each row's output is the row's alone
        exact = any(self._virtual_tokens(a) for a in set(per_row))
        for start in range(0, n, o.batch_size):
            idx = order[start:start + o.batch_size]
            groups = [[i for i in idx if len(enc[i]) == w] for w in sorted({len(enc[i]) for i in idx})] \
                if exact else [idx]
            for group in groups:
                texts = self._generate_ids([enc[i] for i in group], [per_row[i] for i in group], o)
                for i, t in zip(group, texts):
                    out[i] = t
        return out

    def _virtual_tokens(self, adapter: str) -> bool:
        cfg = (getattr(self.model, "peft_config", None) or {}).get(adapter)
        return bool(getattr(cfg, "is_prompt_learning", False))

    # ---- shared-prefix generation ------------------------------------------------------------------
    def prefix_safe(self, adapter: str | None = None) -> bool:
        """Whether `adapter`'s method can run on a cached prefix (methods.Method.shared_prefix): not for
        methods that add virtual tokens or need per-call inputs; those rows are generated whole."""
        from peft_apps.core.methods import shared_prefix_ok

        name = adapter if adapter is not None else (self.adapters[0] if self.adapters else BASE)
        if name == BASE:
            return True
        cfg = (getattr(self.model, "peft_config", None) or {}).get(name)
        return cfg is None or shared_prefix_ok(cfg)

    @torch.inference_mode()
    def encode_prefix(self, prefix_ids: Sequence[int], adapter: str | None = None) -> Prefix:
        """The KV cache of `prefix_ids` under `adapter`, for `generate_prefixed`."""
        with AdapterScope(self, adapter):
            pre = torch.tensor([list(prefix_ids)], dtype=torch.long, device=self.device)
            return Prefix(list(prefix_ids), cache_of(self.model(input_ids=pre, use_cache=True, logits_to_keep=1)))

    @torch.inference_mode()
    def encode_prefixes(self, rows: Sequence[Sequence[int]], adapter: str | None = None,
                        max_tokens: int = 16384) -> list[Prefix]:
        """`encode_prefix` for many prefixes: left-padded batches of up to `max_tokens` (rows x width),
        positions from the mask, each row's K/V then cut out of the batch cache. One at a time where
        shared-prefix attention is off (sliding windows, soft-capping: the model's own attention).

        With shared-prefix attention the prefix cache (`prefix_cache.py`) outlives the call: a prefix
        that starts with blocks an earlier call computed under the same adapter (a review's instructions,
        a question asked again) computes only the tokens after them, and every prefix computed here
        leaves its full blocks for the next call."""
        rows = [list(r) for r in rows]
        if not self.shared_attention:
            return [self.encode_prefix(r, adapter) for r in rows]
        name = adapter if adapter is not None else self._default()
        cached = self.prefix_cache.enabled and self.prefix_safe(adapter)
        out: list[Prefix | None] = [None] * len(rows)
        if cached:
            for i, r in enumerate(rows):
                n, kv = self.prefix_cache.lookup(name, r)
                if n:
                    out[i] = encode_after(self, r, n, kv, adapter)
        todo = [i for i in range(len(rows)) if out[i] is None]
        for i, p in zip(todo, encode_batched(self, [rows[i] for i in todo], adapter, max_tokens)):
            out[i] = p
        if cached:  # every prefix's blocks, those after a hit's cached ones included
            for r, p in zip(rows, out):
                self.prefix_cache.store(name, r, [(layer.keys, layer.values) for layer in p.cache.layers])
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def extend_prefixes(self, items: Sequence[tuple[Prefix, Sequence[int]]], adapter: str | None = None,
                        batch_size: int = 64) -> list[Prefix]:
        """Several prefixes extended by their `more_ids`, in batched forward passes over shared roots."""
        out: list[Prefix] = []
        with AdapterScope(self, adapter):
            if not self.shared_attention:  # whole caches: copy each prefix and run its extension
                import copy

                for pre, more in items:
                    cache = copy.deepcopy(pre.cache)
                    if more:
                        ids = torch.tensor([list(more)], dtype=torch.long, device=self.device)
                        self.model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
                    out.append(Prefix(pre.ids + list(more), cache))
                return out
            out = [p for p, _ in items]  # nothing to add: the prefix itself
            todo = [i for i, (_, m) in enumerate(items) if len(m)]
            for start in range(0, len(todo), batch_size):
                at = todo[start:start + batch_size]
                chunk = [(items[i][0], list(items[i][1])) for i in at]
                order = grouped_by_root([p for p, _ in chunk])
                chunk = [chunk[i] for i in order]
                cache, shared, mask = private_batch([p for p, _ in chunk])
                ids, new_mask = left_pad([m for _, m in chunk], self.tokenizer.pad_token_id, self.device)
                mask = torch.cat([mask.to(self.device), new_mask], dim=1)
                pos = shared.positions(mask)[:, -ids.shape[1]:]
                shared.mask = mask
                self.model(input_ids=ids, position_ids=pos, cache=cache, use_cache=True,
                           logits_to_keep=1, shared_prefix=shared)
                for j, (p, m) in enumerate(chunk):
                    keep = mask[j].bool()
                    tail = [(layer.keys[j:j + 1, :, keep], layer.values[j:j + 1, :, keep]) for layer in cache.layers]
                    out[at[order[j]]] = Prefix(p.ids + m, root=root_of(p), tail=tail)
        return out

    @torch.inference_mode()
    def generate_prefixed(self, rows: Sequence[tuple[Any, Sequence[int]]], prefixes: dict[Any, Prefix],
                          adapter: str | None = None, options: GenerationOptions | None = None,
                          max_new_tokens_per_row: Sequence[int] | None = None, **opts: Any) -> list[str]:
        """Complete `prefix + suffix` for every row, each prefix's KV cache computed once and shared.

        `rows`: (prefix key, suffix ids); `prefixes`: key -> `Prefix` from `encode_prefix` / `extend_prefixes`.
        Suffixes of a batch are left-padded (masked, positions from the mask), and a row leaves the batch as
        soon as it ends (EOS, a stop string, or its `max_new_tokens`), so no row decodes for the longest
        answer's sake. Greedy (with prompt-lookup speculation, `GenerationOptions.lookahead`) unless
        `do_sample`.

        Rows of any prefix share a batch. With shared-prefix attention each row reads its root prefix in
        place and the batch cache holds only the rows' own tokens; otherwise each row's prefix cache is
        copied in, left-padded to the longest, the padding masked. Either way positions and outputs are
        those of the row alone.

        Sliding-window layers (Mistral, Gemma-2, ...) keep only their last `window` tokens, which breaks
        the cached prefix's alignment: a row that could outgrow the window is generated whole instead.
        """
        o = options or GenerationOptions(**opts)
        n = len(rows)
        out_text: list[str] = [""] * n
        limit = list(max_new_tokens_per_row) if max_new_tokens_per_row else [o.max_new_tokens] * n
        if not self.prefix_safe(adapter):  # virtual tokens or per-call inputs: each row generated whole
            for lim in sorted(set(limit)):
                idx = [i for i in range(n) if limit[i] == lim]
                got = self.generate_ids([prefixes[rows[i][0]].ids + list(rows[i][1]) for i in idx], adapter,
                                        GenerationOptions(**{**o.for_rows(idx).__dict__, "row_seeds": None,
                                                             "max_new_tokens": lim}))
                for i, t in zip(idx, got):
                    out_text[i] = t
            return out_text
        window = sliding_window(next(iter(prefixes.values()))) if prefixes else None
        if window is not None:
            look = 0 if o.do_sample else max(0, o.lookahead)
            whole = [i for i in range(n) if len(prefixes[rows[i][0]]) + len(rows[i][1]) + 2 * limit[i] + look + 1
                     > window]
            for i in whole:
                ids = prefixes[rows[i][0]].ids + list(rows[i][1])
                out_text[i] = self.generate_ids([ids], adapter, o.for_row_alone(i, max_new_tokens=limit[i],
                                                                                 batch_size=1))[0]
            skip = set(whole)
            keep = [i for i in range(n) if i not in skip]
            if len(keep) < n:
                got = self.generate_prefixed([rows[i] for i in keep], prefixes, adapter, o.for_rows(keep),
                                             [limit[i] for i in keep]) if keep else []
                for i, t in zip(keep, got):
                    out_text[i] = t
                return out_text
        with AdapterScope(self, adapter):
            order = sorted(range(n), key=lambda i: len(rows[i][1]))
            for start in range(0, n, o.batch_size):
                idx = order[start:start + o.batch_size]
                if self.shared_attention:  # rows of one root side by side
                    idx = [idx[j] for j in grouped_by_root([prefixes[rows[i][0]] for i in idx])]
                pre = [prefixes[rows[i][0]] for i in idx]
                if self.shared_attention:
                    cache, shared, pmask = private_batch(pre)
                else:
                    (cache, pmask), shared = stack_prefix_caches(pre), None
                limits = [max_new_tokens_per_row[i] for i in idx] if max_new_tokens_per_row else None
                suffixes = [list(rows[i][1]) for i in idx]
                gen = PrefixDecoder(self.model, self.tokenizer, cache, pmask, suffixes, o.for_rows(idx), limits,
                                    contexts=[p.ids + s for p, s in zip(pre, suffixes)], shared=shared,
                                    stats=self.decode_stats).run()
                for i, t in zip(idx, gen):
                    out_text[i] = t
        return out_text

    def generate_token_ids(self, rows: Sequence[Sequence[int]], adapter: str | None = None,
                           options: GenerationOptions | None = None) -> list[list[int]]:
        """Like `generate_ids`, returning each row's new token ids (an end-of-sequence id included where the
        row ended at one; stop strings are not applied)."""
        o = options or GenerationOptions()
        rows = [list(r) for r in rows]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out: list[list[int]] = [[] for _ in rows]
        for start in range(0, len(rows), o.batch_size):
            idx = order[start:start + o.batch_size]
            new = self._generate([rows[i] for i in idx], [adapter or self._default()] * len(idx), o)
            eos = stop_ids(self.model, self.tokenizer) | {self.tokenizer.pad_token_id}
            for i, row in zip(idx, new.tolist()):
                end = next((k + 1 for k, t in enumerate(row) if t in eos), len(row))
                out[i] = row[:end]
        return out

    def _default(self) -> str:
        return self.adapters[0] if self.adapters else BASE

    @torch.inference_mode()
    def _generate_ids(self, rows: list[list[int]], adapters: list[str], o: GenerationOptions) -> list[str]:
        texts = self.tokenizer.batch_decode(self._generate(rows, adapters, o), skip_special_tokens=True)
        return [cut_at_stop(t, o.stop) for t in texts] if o.stop else texts

    @torch.inference_mode()
    def _generate(self, rows: list[list[int]], adapters: list[str], o: GenerationOptions) -> torch.Tensor:
        """The new token ids of left-padded `rows` (HF generate), one adapter per row."""
        pad = self.tokenizer.pad_token_id
        ids, mask = left_pad(rows, pad, self.device)
        width = ids.shape[1]
        kw: dict[str, Any] = dict(
            input_ids=ids, attention_mask=mask,
            max_new_tokens=o.max_new_tokens, do_sample=o.do_sample, pad_token_id=pad,
            eos_token_id=sorted(stop_ids(self.model, self.tokenizer)),
        )
        if o.do_sample:
            kw.update(temperature=o.temperature, top_p=o.top_p)
            if o.seed is not None:
                torch.manual_seed(o.seed)
        else:
            kw.update(temperature=None, top_p=None, top_k=None)
        if o.stop:
            kw.update(stop_strings=o.stop, tokenizer=self.tokenizer)
        if len(set(adapters)) == 1:
            with AdapterScope(self, adapters[0]):
                gen = self.model.generate(**kw)
        else:
            gen = self.model.generate(**kw, adapter_names=adapters)
        return gen[:, width:]
