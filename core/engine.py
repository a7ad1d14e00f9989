"""Inference engine: one base model, several named adapters, batched generation.

    engine = Engine.from_pretrained("builtin:tiny", {"a": "runs/x", "b": "runs/y"})
    engine.generate(["prompt 1", "prompt 2"], adapter="a")              # one adapter for the batch
    engine.generate(["prompt 1", "prompt 2"], adapter=["a", "b"])       # one adapter per row (mixed batch)
    engine.chat([[{"role": "user", "content": "..."}]])                 # the first adapter loaded
    engine.generate(["prompt"], adapter="__base__")                     # the base model alone

Rows are left-padded, sorted by length into batches so padding stays small, and decoded until EOS,
a stop string or `max_new_tokens`. Greedy by default; `do_sample=True` with temperature/top_p samples.

Many prompts over a few long shared prefixes (an app asking several questions about each document):

    doc = engine.encode_prefix(doc_ids)                          # the document's KV cache, once
    rel = engine.extend_prefixes([(doc, more_ids)])[0]           # a longer prefix built on it
    engine.generate_prefixed([("d", suffix_ids), ("r", ...)], {"d": doc, "r": rel})

There, a batch's cache holds only each row's own tokens and attention reads each prefix's K/V in
place (`_cascade_attention`); greedy rows speculate with prompt lookup (`GenerationOptions.lookahead`);
rows leave the batch when they finish.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import torch

from peft_apps.core.config import ModelConfig
from peft_apps.core.data import render_prompt
from peft_apps.core.errors import UserError

BASE = "__base__"


@dataclass
class GenerationOptions:
    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.95
    stop: list[str] = field(default_factory=list)
    batch_size: int = 8
    seed: int | None = None
    # Prompt-lookup speculation (greedy decoding in the prefix-cache path): up to `lookahead` draft tokens
    # per row, copied from where the row's latest n-gram last occurred in its prompt or output, are
    # verified in one forward pass. Rows x (1 + drafts) stays within `step_tokens`, so full batches
    # decode one token per row and small batches (a stage's long tail) verify several. 0 turns it off.
    lookahead: int = 10
    step_tokens: int = 64


@dataclass
class Prefix:
    """A token prefix and its KV cache, from `Engine.encode_prefix` / `extend_prefixes`.

    With shared-prefix attention (see `_cascade_attention`) an extension keeps only its own K/V (`tail`,
    per layer) and points at the `root` it extends, so a root's cache is never copied, neither into
    its extensions nor into the batches that use it. Otherwise `cache` holds the whole prefix."""
    ids: list[int]
    cache: Any = None
    root: "Prefix | None" = None
    tail: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.ids)


def adapter_base_config(adapter_dir: str | Path) -> ModelConfig:
    """The model section of the recipe an adapter was trained with (recipe.yaml beside it)."""
    import yaml

    d = Path(adapter_dir)
    if not (d / "adapter_config.json").is_file():
        raise UserError(f"{d} is not an adapter folder (no adapter_config.json)",
                        hint="train one with `peft-apps train APP` or point --adapter at its output folder")
    recipe = d / "recipe.yaml"
    if recipe.is_file():
        data = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
        return ModelConfig.model_validate(data.get("model", {}))
    base = json.loads((d / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{d}: cannot tell which base model the adapter belongs to; pass --model")
    return ModelConfig(base=base)


class Engine:
    def __init__(self, model, tokenizer, adapters: Sequence[str] = ()):
        self.model = model
        self.tokenizer = tokenizer
        self.adapters = list(adapters)
        self.model.eval()
        self.shared_attention = _install_attention(self.model)
        # decoding counters of the prefix-cache path: forward passes, tokens produced, drafts made/accepted
        self.decode_stats = {"forwards": 0, "tokens": 0, "drafted": 0, "accepted": 0}

    # ---- loading -----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, base: str | ModelConfig | None = None,
                        adapters: str | Path | dict[str, str | Path] | None = None,
                        quantize: bool | None = None, dtype: str | None = None) -> "Engine":
        """`base`: hub id, path, `builtin:*` or a ModelConfig; None takes it from the first adapter's recipe.

        `adapters`: one folder, or {name: folder}. `quantize` defaults to the recipe's setting; `dtype`
        ("float32", "bfloat16", ...) to the runtime's choice (bf16 on a GPU that has it, fp32 on a CPU).
        """
        from peft import PeftModel

        from peft_apps.core.modeling import load_base_model, load_tokenizer

        if isinstance(adapters, (str, Path)):
            adapters = {"default": adapters}
        adapters = dict(adapters or {})
        if isinstance(base, ModelConfig):
            mcfg = base
        elif base is None:
            if not adapters:
                raise UserError("no base model and no adapter given")
            mcfg = adapter_base_config(next(iter(adapters.values())))
        else:
            mcfg = ModelConfig(base=base)
            if adapters:  # keep the adapter's quantization unless told otherwise
                try:
                    trained = adapter_base_config(next(iter(adapters.values())))
                    mcfg = mcfg.model_copy(update={"quantization": trained.quantization, "dtype": trained.dtype})
                except UserError:
                    pass
        if quantize is False:
            mcfg = mcfg.model_copy(update={"quantization": "none"})
        if dtype is not None:
            mcfg = mcfg.model_copy(update={"dtype": dtype})
        model = load_base_model(mcfg)
        model.config.use_cache = True
        first = next(iter(adapters), None)
        tok_dir = str(adapters[first]) if first and (Path(adapters[first]) / "tokenizer_config.json").is_file() \
            else None
        tokenizer = load_tokenizer(mcfg, tok_dir)
        if adapters:
            for name, path in adapters.items():
                if not (Path(path) / "adapter_config.json").is_file():
                    raise UserError(f"{path} is not an adapter folder (no adapter_config.json)")
                try:
                    if isinstance(model, PeftModel):
                        model.load_adapter(str(path), adapter_name=name)
                    else:
                        model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
                except RuntimeError as e:
                    if "size mismatch" not in str(e):
                        raise
                    raise UserError(f"adapter {path} does not fit base model {mcfg.base!r}: "
                                    f"{str(e).splitlines()[1].strip()}",
                                    hint="pass the base model the adapter was trained on (--model)") from None
            model.set_adapter(first)
        return cls(model, tokenizer, list(adapters))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

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
        per_row = list(adapter) if isinstance(adapter, (list, tuple)) else [adapter] * n
        if len(per_row) != n:
            raise UserError(f"{len(per_row)} adapter names for {n} prompts")
        default = self.adapters[0] if self.adapters else BASE
        per_row = [default if a is None else a for a in per_row]
        for a in set(per_row) - {BASE}:
            if a not in self.adapters:
                raise UserError(f"unknown adapter {a!r}; loaded: {', '.join(self.adapters) or '(none)'}")
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
        for start in range(0, n, o.batch_size):
            idx = order[start:start + o.batch_size]
            texts = self._generate_ids([enc[i] for i in idx], [per_row[i] for i in idx], o)
            for i, t in zip(idx, texts):
                out[i] = t
        return out

    # ---- shared-prefix generation ------------------------------------------------------------------
    @torch.inference_mode()
    def encode_prefix(self, prefix_ids: Sequence[int], adapter: str | None = None) -> Prefix:
        """The KV cache of `prefix_ids` under `adapter`, for `generate_prefixed`."""
        with _AdapterScope(self, adapter):
            pre = torch.tensor([list(prefix_ids)], dtype=torch.long, device=self.device)
            return Prefix(list(prefix_ids), _cache_of(self.model(input_ids=pre, use_cache=True, logits_to_keep=1)))

    def extend_prefix(self, prefix: Prefix, more_ids: Sequence[int], adapter: str | None = None) -> Prefix:
        """A longer shared prefix: `prefix` extended by `more_ids` (the original is unchanged)."""
        return self.extend_prefixes([(prefix, more_ids)], adapter)[0]

    @torch.inference_mode()
    def extend_prefixes(self, items: Sequence[tuple[Prefix, Sequence[int]]], adapter: str | None = None,
                        batch_size: int = 64) -> list[Prefix]:
        """Several prefixes extended by their `more_ids`, in batched forward passes over shared roots."""
        out: list[Prefix] = []
        with _AdapterScope(self, adapter):
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
                order = sorted(range(len(chunk)), key=lambda i: id(_root(chunk[i][0])))  # rows of a root together
                chunk = [chunk[i] for i in order]
                cache, shared, mask = _private_batch([p for p, _ in chunk])
                ids, new_mask = _left_pad([m for _, m in chunk], self.tokenizer.pad_token_id, self.device)
                mask = torch.cat([mask.to(self.device), new_mask], dim=1)
                pos = shared.positions(mask)[:, -ids.shape[1]:]
                shared.mask = mask
                self.model(input_ids=ids, position_ids=pos, cache=cache, use_cache=True,
                           logits_to_keep=1, shared_prefix=shared)
                for j, (p, m) in enumerate(chunk):
                    keep = mask[j].bool()
                    tail = [(layer.keys[j:j + 1, :, keep], layer.values[j:j + 1, :, keep]) for layer in cache.layers]
                    out[at[order[j]]] = Prefix(p.ids + m, root=_root(p), tail=tail)
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
        window = _sliding_window(next(iter(prefixes.values()))) if prefixes else None
        if window is not None:
            look = 0 if o.do_sample else max(0, o.lookahead)
            whole = [i for i in range(n) if len(prefixes[rows[i][0]]) + len(rows[i][1]) + 2 * limit[i] + look + 1
                     > window]
            for i in whole:
                ids = prefixes[rows[i][0]].ids + list(rows[i][1])
                out_text[i] = self.generate_ids([ids], adapter, GenerationOptions(**{
                    **o.__dict__, "max_new_tokens": limit[i], "batch_size": 1}))[0]
            skip = set(whole)
            keep = [i for i in range(n) if i not in skip]
            if len(keep) < n:
                got = self.generate_prefixed([rows[i] for i in keep], prefixes, adapter, o,
                                             [limit[i] for i in keep]) if keep else []
                for i, t in zip(keep, got):
                    out_text[i] = t
                return out_text
        with _AdapterScope(self, adapter):
            order = sorted(range(n), key=lambda i: len(rows[i][1]))
            for start in range(0, n, o.batch_size):
                idx = order[start:start + o.batch_size]
                if self.shared_attention:  # rows of one root side by side
                    idx.sort(key=lambda i: id(_root(prefixes[rows[i][0]])))
                pre = [prefixes[rows[i][0]] for i in idx]
                if self.shared_attention:
                    cache, shared, pmask = _private_batch(pre)
                else:
                    (cache, pmask), shared = _stack_prefix_caches(pre), None
                limits = [max_new_tokens_per_row[i] for i in idx] if max_new_tokens_per_row else None
                suffixes = [list(rows[i][1]) for i in idx]
                gen = self._decode_rows(cache, pmask, suffixes, o, limits,
                                        contexts=[p.ids + s for p, s in zip(pre, suffixes)], shared=shared)
                for i, t in zip(idx, gen):
                    out_text[i] = t
        return out_text

    def _decode_rows(self, cache, prefix_mask: torch.Tensor, rows: list[list[int]], o: GenerationOptions,
                     limits: list[int] | None = None, contexts: list[list[int]] | None = None,
                     shared: "_SharedPrefix | None" = None) -> list[str]:
        """Decode every row (suffix ids after its cached prefix) until EOS, a stop string or its limit.

        Greedy decoding speculates with prompt lookup (see `GenerationOptions.lookahead`): a row's draft
        tokens are fed after its last token, the forward pass's argmax at each position verifies them,
        and the row keeps the agreeing drafts plus the model's own next token, which is what one-token
        steps would have produced. Rejected drafts stay in the cache, masked out, so rows never need
        realigning.

        With `shared`, `cache` and `prefix_mask` cover only the rows' private tokens (prefix extensions,
        suffix, output); the roots' K/V are read in place by `_cascade_attention`.
        """
        dev = self.device
        pad = self.tokenizer.pad_token_id
        eos = self.tokenizer.eos_token_id
        eos_set = set(eos if isinstance(eos, list) else [eos])
        plen = prefix_mask.shape[1]
        b = len(rows)
        ids, suffix_mask = _left_pad(rows, pad, dev)
        mask = torch.cat([prefix_mask.to(dev), suffix_mask], dim=1)
        limit = limits or [o.max_new_tokens] * b
        look = 0 if o.do_sample else max(0, o.lookahead)
        room = ids.shape[1] + max(limit) * (2 if look else 1) + look + 1
        _with_room(cache, room)
        pos = (shared.positions(mask) if shared else (mask.cumsum(-1) - 1).clamp(min=0))[:, plen:]

        def forward(input_ids: torch.Tensor, position_ids: torch.Tensor, keep: int) -> torch.Tensor:
            if shared:  # the cascade reads the private mask from `shared`; no 4D mask is built
                shared.mask = mask
                return self.model(input_ids=input_ids, position_ids=position_ids, cache=cache, use_cache=True,
                                  logits_to_keep=keep, shared_prefix=shared).logits
            return self.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, cache=cache,
                              use_cache=True, logits_to_keep=keep).logits
        gen = torch.Generator(device="cpu")
        if o.seed is not None:
            gen.manual_seed(o.seed)
        produced: list[list[int]] = [[] for _ in rows]
        active = [i for i in range(b) if limit[i] > 0]
        if not active:
            return [""] * b
        if len(active) < b:
            sel = torch.tensor(active, dtype=torch.long, device=dev)
            cache.batch_select_indices(sel)
            ids, mask, pos = ids[sel], mask[sel], pos[sel]
            if shared:
                shared.select(active)
        drafter = Drafter([list(contexts[i]) for i in active] if contexts and look else None)
        logits = forward(ids, pos, 1)
        last_pos = pos[:, -1].clone()
        # `active[j]` is the row at batch position j; finished rows stay in the batch (fed padding) until
        # half of it has finished, then the batch is compacted: compacting copies the whole cache,
        # so doing it at every finish would cost more than the wasted rows do.
        done = [False] * len(active)
        drafts: list[list[int]] = [[] for _ in active]
        st = self.decode_stats
        w = 1
        while True:
            if o.do_sample:
                preds = [[t] for t in self._pick(logits[:, 0, :], o, gen).tolist()]
            else:
                preds = logits.argmax(-1).tolist()
            nxt = [pad] * len(active)
            for j, row in enumerate(active):
                if done[j]:
                    continue
                p, d = preds[j], drafts[j]
                k = 0
                while k < len(d) and d[k] == p[k]:
                    k += 1
                st["drafted"] += len(d)
                st["accepted"] += k
                if k < len(d):  # mask out the rejected drafts' cache slots
                    first = mask.shape[1] - w + 1
                    mask[j, first + k:first + len(d)] = 0
                last_pos[j] += k
                for tok in p[:k + 1]:
                    if tok in eos_set:
                        done[j] = True
                        break
                    produced[row].append(tok)
                    st["tokens"] += 1
                    if drafter.on:
                        drafter.push(j, tok)
                    if len(produced[row]) >= limit[row] or (
                            o.stop and any(s in self.tokenizer.decode(produced[row][-16:]) for s in o.stop)):
                        done[j] = True
                        break
                nxt[j] = p[k]
            n_done = sum(done)
            if n_done == len(active):
                break
            if n_done and n_done * 2 >= len(active):
                keep = [j for j in range(len(active)) if not done[j]]
                sel = torch.tensor(keep, dtype=torch.long, device=dev)
                cache.batch_select_indices(sel)
                mask, last_pos = mask[sel], last_pos[sel]
                active, nxt = [active[j] for j in keep], [nxt[j] for j in keep]
                drafter.select(keep)
                if shared:
                    shared.select(keep)
                done = [False] * len(active)
            width = min(look, o.step_tokens // len(active) - 1) if drafter.on else 0
            drafts = [[] if done[j] or width <= 0 else drafter.draft(j, min(width, limit[row] - len(produced[row]) - 1))
                      for j, row in enumerate(active)]
            w = 1 + max(len(d) for d in drafts)
            inp = torch.full((len(active), w), pad, dtype=torch.long)  # host: filled per row, one copy
            new_mask = torch.zeros((len(active), w), dtype=mask.dtype)  # host: as inp
            for j, d in enumerate(drafts):
                inp[j, 0] = nxt[j]
                inp[j, 1:1 + len(d)] = torch.tensor(d, dtype=torch.long)  # host: into the host buffer
                new_mask[j, :1 + len(d)] = 1
            mask = torch.cat([mask, new_mask.to(dev)], dim=1)
            step_pos = last_pos.view(-1, 1) + 1 + torch.arange(w, device=dev).view(1, -1)
            last_pos = last_pos + 1
            st["forwards"] += 1
            logits = forward(inp.to(dev), step_pos, w)
        texts = [self.tokenizer.decode(p, skip_special_tokens=True) for p in produced]
        return [_cut_at_stop(t, o.stop) for t in texts] if o.stop else texts

    @staticmethod
    def _pick(logits: torch.Tensor, o: GenerationOptions, gen: torch.Generator) -> torch.Tensor:
        """Sample one token per row (temperature, then top-p)."""
        probs = torch.softmax(logits.float() / o.temperature, dim=-1)
        if o.top_p < 1.0:
            sp, si = probs.sort(dim=-1, descending=True)
            cut = sp.cumsum(-1) - sp > o.top_p
            sp = sp.masked_fill(cut, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, si, sp)
        return torch.multinomial(probs.cpu(), 1, generator=gen).view(-1).to(logits.device)

    @torch.inference_mode()
    def _generate_ids(self, rows: list[list[int]], adapters: list[str], o: GenerationOptions) -> list[str]:
        pad = self.tokenizer.pad_token_id
        ids, mask = _left_pad(rows, pad, self.device)
        width = ids.shape[1]
        kw: dict[str, Any] = dict(
            input_ids=ids, attention_mask=mask,
            max_new_tokens=o.max_new_tokens, do_sample=o.do_sample, pad_token_id=pad,
            eos_token_id=self.tokenizer.eos_token_id,
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
            with _AdapterScope(self, adapters[0]):
                gen = self.model.generate(**kw)
        else:
            gen = self.model.generate(**kw, adapter_names=adapters)
        new = gen[:, width:]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        if o.stop:
            texts = [_cut_at_stop(t, o.stop) for t in texts]
        return texts


class Drafter:
    """Prompt-lookup drafts per row: the tokens that followed the latest earlier occurrence of the row's
    last 3 (else 2, else 1) tokens in its prompt and output. Index kept incrementally, so a draft costs
    a dict lookup rather than a scan of the context."""

    N = (3, 2, 1)

    def __init__(self, contexts: list[list[int]] | None):
        self.on = contexts is not None
        self.ctx = contexts or []
        self.index: list[dict[tuple[int, ...], int]] = []
        for c in self.ctx:
            idx: dict[tuple[int, ...], int] = {}
            for e in range(len(c) - 1):
                self._register(c, idx, e)
            self.index.append(idx)

    def _register(self, c: list[int], idx: dict[tuple[int, ...], int], e: int) -> None:
        """Index the n-grams ending at `e`, whose continuation c[e + 1] is known."""
        for n in self.N:
            if e + 1 >= n:
                idx[tuple(c[e + 1 - n:e + 1])] = e

    def push(self, j: int, tok: int) -> None:
        self.ctx[j].append(tok)
        self._register(self.ctx[j], self.index[j], len(self.ctx[j]) - 2)

    def draft(self, j: int, k: int) -> list[int]:
        if k <= 0:
            return []
        c, idx = self.ctx[j], self.index[j]
        for n in self.N:
            e = idx.get(tuple(c[-n:])) if len(c) >= n else None
            if e is not None:
                return c[e + 1:e + 1 + k]
        return []

    def select(self, keep: list[int]) -> None:
        if self.on:
            self.ctx = [self.ctx[j] for j in keep]
            self.index = [self.index[j] for j in keep]


class _AdapterScope:
    """Run with one named adapter active, or with adapters disabled for the base model."""

    def __init__(self, engine: "Engine", adapter: str | None):
        self.engine, self.adapter, self.ctx = engine, adapter, None

    def __enter__(self):
        e = self.engine
        name = self.adapter if self.adapter is not None else (e.adapters[0] if e.adapters else BASE)
        if name == BASE:
            if e.adapters:
                self.ctx = e.model.disable_adapter()
                self.ctx.__enter__()
        else:
            if name not in e.adapters:
                raise UserError(f"unknown adapter {name!r}; loaded: {', '.join(e.adapters) or '(none)'}")
            e.model.set_adapter(name)
        return self

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


def _sdpa_gqa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' SDPA attention, except for multi-token queries over grouped KV heads: there
    transformers copies K and V once per query group (`repeat_kv`), the whole cache every forward pass,
    which made verifying draft tokens and prefilling suffixes over a long cached prefix cost 10-20x the
    attention itself on the CPU. torch's `enable_gqa` gives the same numbers without the copies."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q_len = query.shape[2]
    if (q_len == 1 or getattr(module, "num_key_value_groups", 1) == 1 or kwargs.get("position_bias") is not None
            or kwargs.get("softcap") is not None or (attention_mask is None and key.shape[2] != q_len)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    causal = attention_mask is None and (is_causal if is_causal is not None else getattr(module, "is_causal", True))
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                           dropout_p=dropout, scale=scaling, is_causal=bool(causal),
                                                           enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def _install_attention(model) -> bool:
    """Route the model's attention through `_attention`: shared-prefix (cascade) attention when a forward
    pass is given `shared_prefix=`, `_sdpa_gqa` for SDPA on the CPU, the model's own function otherwise.
    Returns whether shared-prefix attention is available (standard attention, no sliding window or
    soft-capping, layers that know their index)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    impl = getattr(cfg, "_attn_implementation", None)
    if impl not in ("sdpa", "eager") or "sliding_attention" in (getattr(cfg, "layer_types", None) or []) \
            or getattr(cfg, "attn_logit_softcapping", None) is not None:
        return False
    if not any(hasattr(m, "layer_idx") and hasattr(m, "num_key_value_groups") for m in base.modules()):
        return False
    name = f"peft_apps_{impl}"
    AttentionInterface.register(name, functools.partial(_attention, impl))
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[impl])
    base.set_attn_implementation(name)
    return True


def _attention(impl: str, module, query, key, value, attention_mask, **kwargs):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    shared = kwargs.pop("shared_prefix", None)
    if shared is not None:
        return _cascade_attention(module, query, key, value, shared, kwargs.get("scaling"))
    if impl == "sdpa" and query.device.type == "cpu":
        return _sdpa_gqa(module, query, key, value, attention_mask, **kwargs)
    return ALL_ATTENTION_FUNCTIONS[impl](module, query, key, value, attention_mask, **kwargs)


class _SharedPrefix:
    """Which root prefix each row of a batch extends (rows of one root side by side), and the mask of
    the rows' private tokens (extension, suffix, output) for the forward pass about to run."""

    def __init__(self, roots: list[Prefix]):
        self.roots = roots
        self._index()
        self._mask: torch.Tensor | None = None
        self._bias: dict[tuple, torch.Tensor] = {}

    def _index(self) -> None:
        runs: list[list[Any]] = []
        for j, r in enumerate(self.roots):
            if runs and runs[-1][0] is r:
                runs[-1][2] = j + 1
            else:
                runs.append([r, j, j + 1])
        self.runs = runs
        self.offsets = torch.tensor([len(r) for r in self.roots], dtype=torch.long)  # host: moved where used

    def select(self, keep: list[int]) -> None:
        self.roots = [self.roots[j] for j in keep]
        self._index()

    def positions(self, mask: torch.Tensor) -> torch.Tensor:
        """Position ids of the private tokens: after the root, counting only unmasked tokens."""
        return (mask.cumsum(-1) - 1).clamp(min=0) + self.offsets.to(mask.device).view(-1, 1)

    @property
    def mask(self) -> torch.Tensor | None:
        return self._mask

    @mask.setter
    def mask(self, m: torch.Tensor) -> None:
        self._mask, self._bias = m, {}

    def bias(self, w: int, rep: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Additive mask for `w` queries (the last `w` private tokens) x `rep` heads per KV head, built once
        per forward pass: private tokens that are unmasked and not after the query."""
        key = (w, rep, dtype)
        if key not in self._bias:
            m = self._mask.to(device).bool()
            b, n = m.shape
            causal = torch.arange(n, device=device).view(1, n) <= (n - w + torch.arange(w, device=device)).view(w, 1)
            allowed = m.view(b, 1, n) & causal.view(1, w, n)
            bias = torch.zeros((b, w, n), dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)
            self._bias[key] = bias.view(b, 1, 1, w, n).expand(b, 1, rep, w, n).reshape(b, 1, rep * w, n)
        return self._bias[key]


def _attention_lse(q, k, v, bias, scale):
    """Attention output and log-sum-exp of the scores (to merge attention over disjoint key sets)."""
    if q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=bias,
                                                                            scale=scale)[:2]
        return out, lse
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * (scale or q.shape[-1] ** -0.5)
    if bias is not None:
        s = s + bias.float()
    lse = torch.logsumexp(s, dim=-1)
    return torch.matmul(torch.exp(s - lse.unsqueeze(-1)), v.float()).to(q.dtype), lse


def _cascade_attention(module, query, key, value, shared: _SharedPrefix, scaling):
    """Attention of each row over its root prefix and its private tokens, the two merged by log-sum-exp.

    The private part is ordinary masked attention over the batch cache. A root's K/V is read once for
    all its rows: their queries are stacked into one matrix against the root's keys, instead of every
    row holding and reading its own padded copy of the prefix (the old batch cache: rows x longest
    prefix, copied per batch and read per step, which dominated decoding over long documents)."""
    b, h, w, d = query.shape
    kvh = key.shape[1]
    rep = h // kvh
    q = query.reshape(b, kvh, rep * w, d)  # query head kv * rep + r reads KV head kv
    out, lse = _attention_lse(q, key, value, shared.bias(w, rep, query.dtype, query.device), scaling)
    li = module.layer_idx
    for root, a, z in shared.runs:
        layer = root.cache.layers[li]
        n = z - a
        qr = q[a:z].transpose(0, 1).reshape(1, kvh, n * rep * w, d)
        o_r, lse_r = _attention_lse(qr, layer.keys, layer.values, None, scaling)
        o_r = o_r.view(kvh, n, rep * w, d).transpose(0, 1)
        lse_r = lse_r.view(kvh, n, rep * w).transpose(0, 1)
        total = torch.logaddexp(lse[a:z], lse_r)
        out[a:z] = out[a:z] * torch.exp(lse[a:z] - total).unsqueeze(-1).to(out.dtype) \
            + o_r * torch.exp(lse_r - total).unsqueeze(-1).to(out.dtype)
    return out.reshape(b, h, w, d).transpose(1, 2).contiguous(), None


def _sliding_window(prefix: Prefix) -> int | None:
    """The smallest sliding window among the cache layers of `prefix`'s root, or None (all full layers)."""
    cache = _root(prefix).cache
    sizes = [layer.sliding_window for layer in getattr(cache, "layers", []) if hasattr(layer, "sliding_window")]
    return min(sizes) if sizes else None


def _root(p: Prefix) -> Prefix:
    return p.root if p.root is not None else p


def _private_batch(prefixes: list[Prefix]):
    """The batch cache of the rows' private tokens (their prefixes' extensions, left-padded), the
    `_SharedPrefix` of their roots, and the private mask."""
    roots = [_root(p) for p in prefixes]
    template = roots[0].cache
    empty = [(layer.keys[:, :, :0], layer.values[:, :, :0]) for layer in template.layers]
    cache, mask = _left_padded_cache(template, [p.tail or empty for p in prefixes])
    return cache, _SharedPrefix(roots), mask


def _left_padded_cache(template, rows: list[list[tuple[torch.Tensor, torch.Tensor]]]):
    """A batch cache (shaped like `template`) from each row's per-layer (keys, values) of one row and any
    length, left-padded to the longest, and its mask. The template's own tensors are not copied."""
    import copy

    import torch.nn.functional as F

    lengths = [kv[0][0].shape[2] for kv in rows]
    width = max(lengths)
    cache = copy.copy(template)
    cache.layers = [copy.copy(layer) for layer in template.layers]
    for li, layer in enumerate(cache.layers):
        layer.keys = torch.cat([F.pad(kv[li][0], (0, 0, width - n, 0)) for kv, n in zip(rows, lengths)], 0)
        layer.values = torch.cat([F.pad(kv[li][1], (0, 0, width - n, 0)) for kv, n in zip(rows, lengths)], 0)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # host: filled here, moved in one copy
    for i, n in enumerate(lengths):
        mask[i, width - n:] = 1
    return cache, mask.to(template.layers[0].keys.device)


def _left_pad(rows: list[list[int]], pad: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows left-padded to one width, and their attention mask, on `device` (built on the CPU, moved
    in one copy each)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)  # host: filled here, moved in one copy
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # host: as ids
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)  # host: into the host buffer
        mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


@lru_cache(maxsize=1)
def _growing_layer_cls():
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A DynamicLayer with spare capacity: appending a token writes into a preallocated buffer
        instead of `torch.cat` copying the whole cache every step (O(length) per token, O(length^2)
        per answer), which dominated batched decoding over long document prefixes."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, extra: int):
            super().__init__()
            self.device = keys.device
            self.is_initialized = True
            b, h, n, d = keys.shape
            self._k = keys.new_empty((b, h, n + extra, d))
            self._v = values.new_empty((b, values.shape[1], n + extra, values.shape[-1]))
            self._k[:, :, :n] = keys
            self._v[:, :, :n] = values
            self._n = n
            self.keys, self.values = self._k[:, :, :n], self._v[:, :, :n]

        def update(self, key_states, value_states, *args, **kwargs):
            m = key_states.shape[-2]
            if self._n + m > self._k.shape[-2]:  # out of room: grow geometrically
                grow = max(m, self._k.shape[-2])
                self._k = torch.cat([self._k, self._k.new_empty(self._k.shape[:2] + (grow, self._k.shape[-1]))], 2)
                self._v = torch.cat([self._v, self._v.new_empty(self._v.shape[:2] + (grow, self._v.shape[-1]))], 2)
            self._k[:, :, self._n:self._n + m] = key_states
            self._v[:, :, self._n:self._n + m] = value_states
            self._n += m
            self.keys, self.values = self._k[:, :, :self._n], self._v[:, :, :self._n]
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[:, :, :self._n], self._v[:, :, :self._n]

    return GrowingLayer


def _with_room(cache, extra: int):
    """Swap a DynamicCache's layers for growing ones with `extra` free slots (plain layers are kept)."""
    from transformers.cache_utils import DynamicLayer

    cls = _growing_layer_cls()
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and layer.is_initialized:
            cache.layers[i] = cls(layer.keys, layer.values, extra)
    return cache


def _stack_prefix_caches(items: list[Prefix]):
    """One batch cache from whole single-row prefix caches of different lengths (left-padded) + its mask."""
    rows = [[(layer.keys, layer.values) for layer in p.cache.layers] for p in items]
    return _left_padded_cache(items[0].cache, rows)


def _cache_of(out):
    return getattr(out, "cache", None) or getattr(out, "past_key_values", None)


def _cut_at_stop(text: str, stops: list[str]) -> str:
    cut = len(text)
    for s in stops:
        j = text.find(s)
        if j != -1:
            cut = min(cut, j)
    return text[:cut]
