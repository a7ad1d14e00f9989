"""The scheduler's admission and prefill: which waiting rows join (the batch's room, one adapter at a time
where adapters cannot mix), the prefix cache looked up and filled, prefixes shared within a batch, and the
prefill passes, chunked while other rows decode (see `scheduler.py`'s docstring for the whole)."""

from __future__ import annotations

import time
from collections import deque

import torch

from peft_apps.core.engine import GenerationOptions
from peft_apps.core.engine.caches import cache_of, left_pad

from .rows import Row


def _prompt_learning(model, adapter: str) -> bool:
    """Rows of this adapter cannot decode on a cached prefix (virtual tokens, per-call inputs)."""
    from peft_apps.core.methods import shared_prefix_ok

    cfg = (getattr(model, "peft_config", None) or {}).get(adapter)
    return cfg is not None and not shared_prefix_ok(cfg)


def _shell(cache):
    """A copy of `cache` whose layers hold no tokens (a template for batch caches; keeps no tensor alive)."""
    import copy

    shell = copy.copy(cache)
    shell.layers = []
    for layer in cache.layers:
        layer = copy.copy(layer)
        layer.keys = layer.keys.new_empty(layer.keys.shape[:2] + (0,) + layer.keys.shape[3:])
        layer.values = layer.values.new_empty(layer.values.shape[:2] + (0,) + layer.values.shape[3:])
        shell.layers.append(layer)
    return shell


def _by_rows(parts: list[tuple[int, int]], keys: int, width: int) -> bool:
    """Whether attention row by row (`engine/attention.py`) computes clearly fewer scores than one masked
    call over the pass: that call scores every query against every key, padding and future included; row
    by row, each row's new tokens score half their own square and their head, plus a merge per head."""
    rows = sum(n * (h + n / 2 + (64 if h else 0)) + 4096 for h, n in parts)
    return rows < 0.7 * len(parts) * width * keys


class Admission:
    """The admission half of `Scheduler` (a mixin: it works on the scheduler's own state: `waiting`,
    `prefilling`, `batch`, `prefix_cache`, `stats`)."""

    def _take(self) -> list[Row]:
        """The waiting rows that may join now (the batch's room; one adapter at a time where adapters cannot
        mix)."""
        room = self.max_batch - len(self.rows) - len(self.prefilling)
        if room <= 0 or not self.waiting:
            return []
        if self.mixed or self.static:
            return [self.waiting.popleft() for _ in range(min(room, len(self.waiting)))]
        busy = self.rows or self.prefilling
        adapter = busy[0].adapter if busy else self.waiting[0].adapter
        take, keep = [], deque()
        while self.waiting:
            r = self.waiting.popleft()
            (take if r.adapter == adapter and len(take) < room else keep).append(r)
        self.waiting = keep
        return take

    def _admit(self, rows: list[Row]) -> None:
        """New rows: the static ones generated at once; the others looked up in the prefix cache (their
        cached blocks are not computed again), rows of one adapter with a long common prefix given it
        computed once, then queued for prefill."""
        rows = [r for r in rows if not self._dropped(r)]
        static = [r for r in rows if self.static or _prompt_learning(self.model, r.adapter)]
        if static:
            self._static(static)
        rows = [r for r in rows if r not in static]
        for r in rows:
            r.skipped = 0
            self.stats["prompt_tokens"] += len(r.ids)
            r.computed, r.head = self.prefix_cache.lookup(r.adapter, r.ids)
        for prefix, members in self._groups(rows):
            leader = max(members, key=lambda r: r.computed)
            if not prefix or len(prefix) <= leader.computed:
                continue
            out, mask, _ = self._pass([(leader, prefix[leader.computed:])])
            if out is None:  # found out here: this model's cache is not batched this way
                self._static([r for r in rows if r.finish_reason is None])
                return
            kv = self._row_kv(cache_of(out), mask, 0)
            self.stats["shared_prefix_tokens"] += sum(len(prefix) - max(m.computed, leader.computed) for m in members
                                                      if m is not leader)
            for m in members:
                m.head, m.computed = kv, len(prefix)
        self.prefilling.extend(rows)

    def _groups(self, rows: list[Row]) -> list[tuple[list[int], list[Row]]]:
        """Rows of one adapter whose prompts share `prefix_min` tokens or more, with that shared prefix
        (every member keeps at least one token of its own); the rest as one group with no prefix."""
        import os.path

        groups, loose = [], []
        by_adapter: dict[str, list[Row]] = {}
        for r in rows:
            by_adapter.setdefault(r.adapter, []).append(r)
        for members in by_adapter.values():
            members.sort(key=lambda r: r.ids)
            run: list[Row] = []
            for r in members + [None]:  # type: ignore[list-item]
                if r is not None and run and len(os.path.commonprefix([run[0].ids, r.ids])) >= self.prefix_min:
                    run.append(r)
                    continue
                if len(run) > 1:
                    common = os.path.commonprefix([x.ids for x in run])[:min(len(x.ids) for x in run) - 1]
                    if len(common) >= self.prefix_min:
                        groups.append((list(common), run))
                    else:
                        loose.extend(run)
                else:
                    loose.extend(run)
                run = [r] if r is not None else []
        if loose:
            groups.append(([], loose))
        return groups

    def _prefill(self) -> None:
        """Prefill the rows waiting for it (`_choose`): where passes mix (`_mixes`), in one row of tokens
        without padding; otherwise in passes of similar lengths (a pass pads its rows to its longest: on a
        CPU, padding costs as much as tokens)."""
        chosen = self._choose()
        if chosen and self._mixes():
            self._mixed_pass(chosen, None, [])[1]()
            return
        chosen.sort(key=lambda x: x[1])
        passes, cur = [], []
        for r, take in chosen:
            if cur and (len(cur) + 1) * take > 1.25 * (sum(t for _, t in cur) + take):
                passes.append(cur)
                cur = []
            cur.append((r, take))
        if cur:
            passes.append(cur)
        for i, group in enumerate(passes):
            if not self._prefill_pass([(r, r.ids[r.computed:r.computed + take]) for r, take in group]):
                rest = [r for g in passes[i:] for r, _ in g] + self.prefilling
                self._static([r for r in rest if r.finish_reason is None])
                self.prefilling = []
                return

    def _choose(self) -> list[tuple[Row, int]]:
        """The rows to prefill now and how many prompt tokens each computes, taken out of `prefilling`:
        shortest first (a row left out 8 times goes first), whole prompts up to `prefill_tokens`. While rows
        decode and chunked prefill is on, at most `prefill_chunk` prompt tokens are computed before the next
        decoding step: whole prompts that fit, or a chunk of a prompt longer than that, alone, so a long
        prompt is spread over several steps. A prompt is split only when it is longer than a chunk:
        splitting the rest of the budget off the next prompt left fragments that each cost a pass and a
        copy of their head (on SmolLM2, 76 passes for 12.1k tokens, against 60-67)."""
        chunked = self.prefill_chunk > 0 and bool(self.rows)
        budget = self.prefill_chunk if chunked else self.prefill_tokens
        todo = [r for r in self.prefilling if not self._dropped(r)]
        todo.sort(key=lambda r: (r.skipped < 8, len(r.ids) - r.computed))
        chosen, total = [], 0
        for r in todo:
            rest = len(r.ids) - r.computed
            take = min(rest, budget) if chunked else rest  # a prompt longer than a chunk: a chunk of it, alone
            if chosen and total + take > budget:
                break
            chosen.append((r, take))
            total += take
        taken = {id(r) for r, _ in chosen}
        for r in todo:
            if id(r) not in taken:
                r.skipped += 1
        self.prefilling = [r for r in todo if id(r) not in taken]
        self.computing = [r for r, _ in chosen]
        return chosen

    def _prefill_pass(self, parts: list[tuple[Row, list[int]]]) -> bool:
        """One forward pass over `parts` (rows and the prompt ids each computes now), then `_computed`.
        False where the model's cache cannot be batched this way (nothing was taken)."""
        out, mask, positions = self._pass(parts)
        if out is None:
            return False
        self._computed(parts, cache_of(out), mask, positions, out.logits[:, -1, :])
        return True

    def _computed(self, parts: list[tuple[Row, list[int]]], cache, mask: torch.Tensor, positions: torch.Tensor,
                  logits: torch.Tensor) -> None:
        """After a pass computed `parts` (`cache`: their keys and values, each row's head and new tokens in
        the columns `mask` marks; `positions` the new tokens'; `logits` [rows, vocabulary] each row's last):
        rows whose prompt is done take their first token and join the running batch; the others keep their
        keys and values for the next pass. The full blocks computed go to the prefix cache."""
        complete = []
        block = self.prefix_cache.block
        for j, (r, part) in enumerate(parts):
            r.computed += len(part)
            if r.computed < len(r.ids):  # more to come: its keys and values so far are its head
                r.head = self._row_kv(cache, mask, j)
                self.prefix_cache.store(r.adapter, r.ids[:r.computed], r.head)
                self.prefilling.append(r)
                continue
            r.head = None
            complete.append(j)
            full = r.computed // block * block
            if self.prefix_cache.enabled and full:
                first = self.prefix_cache.cached_blocks(r.adapter, r.ids[:full]) * block
                if first < full:  # only the blocks the cache lacks are copied out of the batch
                    kv = self._row_kv(cache, mask, j, first, full)
                    self.prefix_cache.store(r.adapter, r.ids[:full], kv, offset=first)
        if not complete:
            return
        rows = [parts[j][0] for j in complete]
        first_tokens = self._pick(logits[complete], rows)
        keep = [j for j, r, t in zip(complete, rows, first_tokens) if not self._accept(r, t)]
        if not keep:
            return
        tokens = dict(zip(complete, first_tokens))
        index = torch.tensor(keep, dtype=torch.long, device=self.engine.device)
        t0 = time.perf_counter()
        if self.rows:
            self.stats["joined_running"] += 1
        self.batch.join([parts[j][0] for j in keep], cache, index, mask, positions[:, -1], [tokens[j] for j in keep])
        self.stats["join_s"] += time.perf_counter() - t0

    def _mixed_inputs(self, chosen: list[tuple[Row, int]], start: int):
        """The prefill half of a mixed pass (`engine/attention.py` `MixedPass`): `parts`, a cache for the
        rows' keys and values (shaped like the model's), their heads and (head, new tokens), the batch's
        mask and positions (each row left-padded, head then new tokens), and the rows' ids, positions and
        adapter runs in the pass's row of tokens, which starts after `start` decoding tokens. The rows are
        ordered by adapter, so that the rows of one adapter make one run: each run costs every LoRA layer
        two matmuls (42 prompts of 4 adapters: 42 runs of ~160 tokens took 80 us per layer each, 4 runs of
        ~1660 tokens 250 us)."""
        import copy

        dev = self.engine.device
        chosen = sorted(chosen, key=lambda c: c[0].adapter)  # stable: `_choose`'s order within an adapter
        parts = [(r, r.ids[r.computed:r.computed + take]) for r, take in chosen]
        cache = copy.copy(self._template)
        cache.layers = [copy.copy(layer) for layer in self._template.layers]
        layout = [(r.head[0][0].shape[2] if r.head else 0, len(p)) for r, p in parts]
        width = max(h + m for h, m in layout)
        mask = torch.zeros((len(parts), width), dtype=torch.long)  # host: filled here, moved in one copy
        ids, pos, runs, at = [], [], [], start
        for j, ((r, p), (h, m)) in enumerate(zip(parts, layout)):
            mask[j, width - h - m:] = 1
            ids.extend(p)
            pos.extend(range(h, h + m))
            if runs and runs[-1][2] == r.adapter:
                runs[-1] = (runs[-1][0], at + m, r.adapter)
            else:
                runs.append((at, at + m, r.adapter))
            at += m
        mask = mask.to(dev)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self.stats["prefill_tokens"] += at - start
        self.stats["prefills"] += 1
        return parts, cache, [r.head for r, _ in parts], mask, positions, layout, ids, pos, runs

    def _pass(self, parts: list[tuple[Row, list[int]]]):
        """One forward pass computing each row's `ids` over its `head` (the keys and values of its first
        `done` tokens, or none): the heads left-padded to one width, then the new ids left-padded to
        another. Returns (output, mask, positions of the new ids), or (None, None, None) where the model's
        cache cannot be batched this way."""
        from peft_apps.core.engine.caches import _left_padded_cache

        dev = self.engine.device
        rows = [r for r, _ in parts]
        cache, hmask = None, None
        if any(r.head is not None for r in rows):
            template = self._template
            empty = [(k[:, :, :0], v[:, :, :0]) for k, v in next(r.head for r in rows if r.head is not None)]
            cache, hmask = _left_padded_cache(template, [r.head or empty for r in rows])
        ids, smask = left_pad([p for _, p in parts], self.tokenizer.pad_token_id, dev)
        mask = smask if hmask is None else torch.cat([hmask, smask], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, mask.shape[1] - ids.shape[1]:]
        heads = [0] * len(rows) if hmask is None else [int(h) for h in hmask.sum(-1).tolist()]
        layout = [(h, len(p)) for h, (_, p) in zip(heads, parts)]  # each row's head and new tokens
        out = self._forward(ids, mask, positions, cache, [r.adapter for r in rows],
                            parts=layout if _by_rows(layout, mask.shape[1], ids.shape[1]) else None)
        if not self._batchable(cache_of(out)):
            return None, None, None
        if self._template is None:
            self._template = _shell(cache_of(out))
        self.stats["prefill_tokens"] += int(smask.sum())
        self.stats["prefills"] += 1
        return out, mask, positions

    @staticmethod
    def _row_kv(cache, mask: torch.Tensor, j: int, start: int = 0, end: int | None = None
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Row `j`'s keys and values of its tokens `start:end`, in token order (its padding columns left
        out), batch 1, per layer."""
        cols = mask[j].nonzero().view(-1)[start:end]
        return [(layer.keys[j:j + 1].index_select(2, cols), layer.values[j:j + 1].index_select(2, cols))
                for layer in cache.layers]

    def _batchable(self, cache) -> bool:
        from transformers.cache_utils import DynamicLayer

        if all(type(layer) is DynamicLayer for layer in cache.layers):
            return True
        self.static = True  # sliding-window (or other) cache layers: generate a batch at a time instead
        return False

    def _static(self, rows: list[Row]) -> None:
        """Rows the running batch cannot hold, generated by the engine's `generate_ids`, grouped by adapter
        and settings (their text arrives at the end)."""
        groups: dict[tuple, list[Row]] = {}
        for r in rows:
            groups.setdefault((r.adapter, r.max_new_tokens, r.do_sample, r.temperature, r.top_p, tuple(r.stop),
                               r.seed), []).append(r)
        for (adapter, limit, sample, temp, top_p, stop, seed), members in groups.items():
            o = GenerationOptions(max_new_tokens=limit, do_sample=sample and temp > 0, temperature=temp or 1.0,
                                  top_p=top_p, stop=list(stop), seed=seed, batch_size=self.max_batch)
            t0 = time.perf_counter()
            ids = self.engine.generate_token_ids([r.ids for r in members], adapter=adapter, options=o)
            self.stats["static_seconds"] += time.perf_counter() - t0
            for r, got in zip(members, ids):
                r.produced = [t for t in got if t not in self.eos]
                ended = len(r.produced) < len(got) or len(r.produced) < limit
                r.finish("stop" if ended else "length")
