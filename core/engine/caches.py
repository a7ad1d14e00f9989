"""KV caches for batched decoding over cached prefixes: root prefixes encoded in batches (or after blocks
of the prefix cache), batch caches assembled from per-prefix caches (left-padded), layers that grow in
place, and the prefix-tree helpers."""

from __future__ import annotations

from functools import lru_cache

import torch

from .attention import SharedPrefix
from .options import Prefix
from .scope import AdapterScope


def sliding_window(prefix: Prefix) -> int | None:
    """The smallest sliding window among the cache layers of `prefix`'s root, or None (all full layers)."""
    cache = root_of(prefix).cache
    sizes = [layer.sliding_window for layer in getattr(cache, "layers", []) if hasattr(layer, "sliding_window")]
    return min(sizes) if sizes else None


def root_of(p: Prefix) -> Prefix:
    return p.root if p.root is not None else p


def grouped_by_root(prefixes: list[Prefix]) -> list[int]:
    """Indices of `prefixes`, those of one root side by side, roots in order of first use (stable, so a
    batch's row order, and a shared sampler's draws, do not depend on where the caches lie in memory)."""
    first: dict[int, int] = {}
    for p in prefixes:
        first.setdefault(id(root_of(p)), len(first))
    return sorted(range(len(prefixes)), key=lambda i: first[id(root_of(prefixes[i]))])


def private_batch(prefixes: list[Prefix]):
    """The batch cache of the rows' private tokens (their prefixes' extensions, left-padded), the
    `SharedPrefix` of their roots, and the private mask."""
    roots = [root_of(p) for p in prefixes]
    template = roots[0].cache
    empty = [(layer.keys[:, :, :0], layer.values[:, :, :0]) for layer in template.layers]
    cache, mask = _left_padded_cache(template, [p.tail or empty for p in prefixes])
    return cache, SharedPrefix(roots), mask


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


def left_pad(rows: list[list[int]], pad: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
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


def with_room(cache, extra: int):
    """Swap a DynamicCache's layers for growing ones with `extra` free slots (plain layers are kept)."""
    from transformers.cache_utils import DynamicLayer

    cls = _growing_layer_cls()
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and layer.is_initialized:
            cache.layers[i] = cls(layer.keys, layer.values, extra)
    return cache


def stack_prefix_caches(items: list[Prefix]):
    """One batch cache from whole single-row prefix caches of different lengths (left-padded) + its mask."""
    rows = [[(layer.keys, layer.values) for layer in p.cache.layers] for p in items]
    return _left_padded_cache(items[0].cache, rows)


def cache_of(out):
    return getattr(out, "cache", None) or getattr(out, "past_key_values", None)


def encode_after(engine, ids: list[int], n: int, kv, adapter: str | None) -> Prefix:
    """The prefix `ids` whose first `n` tokens' K/V are `kv` (from the prefix cache): the rest computed
    over them."""
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache()
    for i, (k, v) in enumerate(kv):
        cache.update(k, v, i)
    with AdapterScope(engine, adapter):
        more = torch.tensor([ids[n:]], dtype=torch.long, device=engine.device)
        pos = torch.arange(n, len(ids), device=engine.device).view(1, -1)
        engine.model(input_ids=more, position_ids=pos, cache=cache, use_cache=True, logits_to_keep=1)
    return Prefix(list(ids), cache)


def encode_batched(engine, rows: list[list[int]], adapter: str | None, max_tokens: int) -> list[Prefix]:
    """Each row's KV cache as a prefix of its own: rows of similar lengths in left-padded passes of up to
    `max_tokens` (rows x width), positions from the mask, each row's K/V then cut out of the batch cache."""
    if len(rows) < 2:
        return [engine.encode_prefix(r, adapter) for r in rows]
    import copy

    out: list[Prefix | None] = [None] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths: little padding
    batches, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * len(rows[i]) > max_tokens:
            batches.append(cur)
            cur = []
        cur.append(i)
    batches.append(cur)
    with AdapterScope(engine, adapter):
        for idx in batches:
            if len(idx) == 1:
                out[idx[0]] = engine.encode_prefix(rows[idx[0]], adapter)
                continue
            ids, mask = left_pad([rows[i] for i in idx], engine.tokenizer.pad_token_id, engine.device)
            pos = (mask.cumsum(1) - 1).clamp(min=0)
            cache = cache_of(engine.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                                        logits_to_keep=1))
            for j, i in enumerate(idx):
                keep = mask[j].bool()
                one = copy.copy(cache)
                one.layers = [copy.copy(layer) for layer in cache.layers]
                for layer in one.layers:
                    layer.keys = layer.keys[j:j + 1, :, keep].contiguous()
                    layer.values = layer.values[j:j + 1, :, keep].contiguous()
                out[i] = Prefix(rows[i], one)
    return out  # type: ignore[return-value]
