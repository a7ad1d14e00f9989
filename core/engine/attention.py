"""The engine's attention routing, installed on a model it serves (`install_attention`):

- shared-prefix (cascade) attention for a forward pass given `shared_prefix=`: each row attends over its
  root prefix's K/V in place and over its private tokens, the two merged by log-sum-exp;
- SDPA with grouped-query heads on the CPU without copying K/V per query group (`_sdpa_gqa`), one
  decoding step by runs of rows (`row_spans`), a server's prefill pass row by row (`row_parts`);
- a server's decoding step and prefill rows in one pass (`MixedPass`, given `mixed=`);
- the model's own attention function otherwise.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import torch

from .native import decode_attention
from .options import Prefix


def _sdpa_gqa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' SDPA attention, except for one decoding step (each query head group read against its
    KV head in place; given `row_spans`, by runs of rows from their first used column) and for multi-token
    queries over grouped KV heads: there
    transformers copies K and V once per query group (`repeat_kv`), the whole cache every forward pass,
    which made verifying draft tokens and prefilling suffixes over a long cached prefix cost 10-20x the
    attention itself on the CPU. torch's `enable_gqa` gives the same numbers without the copies."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q_len = query.shape[2]
    groups = getattr(module, "num_key_value_groups", 1)
    plain = kwargs.get("position_bias") is None and kwargs.get("softcap") is None
    if plain and q_len == 1 and attention_mask is not None and attention_mask.dim() == 4:
        # one decoding step: a KV head's query group as `groups` queries of one row against its keys
        b, h, _, d = query.shape
        q = query.view(b, key.shape[1], h // key.shape[1], d)
        out = _decode_rows(q, key, value, attention_mask, kwargs.get("row_spans"), dropout, scaling)
        return out.view(b, h, 1, d).transpose(1, 2).contiguous(), None
    parts = kwargs.get("row_parts")
    if plain and parts is not None and q_len > 1 and dropout == 0.0 and len(parts) == query.shape[0]:
        return _prefill_rows(query, key, value, parts, scaling), None
    if groups == 1 or not plain or (attention_mask is None and key.shape[2] != q_len):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    causal = attention_mask is None and (is_causal if is_causal is not None else getattr(module, "is_causal", True))
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                           dropout_p=dropout, scale=scaling, is_causal=bool(causal),
                                                           enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def _decode_rows(q, key, value, mask, spans, dropout, scaling):
    """One decoding step's attention, `q` [rows, KV heads, queries per KV head, dim]; `mask` [rows, 1, 1 or
    groups, keys] hides padding. The engine's own kernel where it applies (`native.decode_attention`: each
    row read from its first attended key, at about twice SDPA's pace); else SDPA, each query group read
    against its KV head in place (no copy per group, no causal mask needed: every key is in the query's
    past), by runs of rows `spans` from their first used column (`serve/batch.py`)."""
    b, kvh, g, d = q.shape
    n = key.shape[2]
    if dropout == 0.0 and mask.dtype == torch.bool and mask.shape[1:3] == (1, 1) and mask.shape[0] in (1, b) \
            and mask.shape[3] == n:
        out = decode_attention(q, key, value, mask[:, 0, 0].expand(b, n), scaling)
        if out is not None:
            return out
    spans = spans or [(0, b, 0)]
    out = q.new_empty(q.shape) if len(spans) > 1 else None
    mask = _additive(mask, q.dtype)
    for a, z, col in spans:
        m = mask[a:z, :, :, col:].expand(z - a, 1, 1, n - col).expand(z - a, 1, g, n - col)
        o = torch.nn.functional.scaled_dot_product_attention(q[a:z], key[a:z, :, col:], value[a:z, :, col:],
                                                             attn_mask=m, dropout_p=dropout, scale=scaling)
        if out is None:
            out = o
        else:
            out[a:z] = o
    return out


_memo = threading.local()


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean attention mask as an additive one (0 where attended, the dtype's lowest elsewhere), made
    once for all the layers of a forward pass (which share one mask object): SDPA converted a boolean
    mask at every call, 10 us of a 25 us call for a row of 500 keys, in every layer and run of rows."""
    if mask.dtype != torch.bool:
        return mask
    version = None if mask.is_inference() else mask._version  # inference tensors cannot change in place
    got = getattr(_memo, "mask", None)
    if got is not None and got[0] is mask and got[1] == dtype and got[2] == version:
        return got[3]
    add = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
    _memo.mask = (mask, dtype, version, add)
    return add


def _prefill_rows(query, key, value, parts: list[tuple[int, int]], scaling):
    """A prefill pass row by row (`row_parts`: each row's cached head length and new token count, the
    layout of the scheduler's passes: heads right-aligned in the first `key_len - q_len` columns, new tokens
    right-aligned in the rest). A row's new tokens attend causally to themselves without a mask (the
    kernel skips the blocks above the diagonal) and to their head without one, the two merged by
    log-sum-exp. The batched masked call computed every padded and future block and converted the
    boolean mask to an additive one in every layer: twice the work."""
    b, h, w, d = query.shape
    first = key.shape[2] - w
    out = query.new_zeros(query.shape)
    for j, (head, n) in enumerate(parts):
        if n <= 0:
            continue
        out[j:j + 1, :, w - n:] = _row_attention(
            query[j:j + 1, :, w - n:], key[j:j + 1, :, key.shape[2] - n:], value[j:j + 1, :, key.shape[2] - n:],
            key[j:j + 1, :, first - head:first], value[j:j + 1, :, first - head:first], scaling)
    return out.transpose(1, 2).contiguous()


def _row_attention(q, keys, values, head_keys, head_values, scaling):
    """One row's new tokens `q` [1, heads, n, dim]: causal attention over their own `keys`/`values` (no
    mask: the kernel skips the blocks above the diagonal), merged by log-sum-exp with attention over the
    row's cached head (`head_keys`/`head_values`, possibly empty)."""
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    o, lse = op(q, keys, values, is_causal=True, scale=scaling)[:2]
    if head_keys.shape[2] > 0:
        o_h, lse_h = op(q, head_keys, head_values, scale=scaling)[:2]
        o = _merged(o, lse, o_h, lse_h)
    return o


def install_attention(model) -> bool:
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

    mixed = kwargs.pop("mixed", None)
    if mixed is not None:
        return mixed.attention(module.layer_idx, query, key, value, kwargs.get("scaling"))
    shared = kwargs.pop("shared_prefix", None)
    if shared is not None:
        return _cascade_attention(module, query, key, value, shared, kwargs.get("scaling"))
    if impl == "sdpa" and query.device.type == "cpu":
        return _sdpa_gqa(module, query, key, value, attention_mask, **kwargs)
    return ALL_ATTENTION_FUNCTIONS[impl](module, query, key, value, attention_mask, **kwargs)


class MixedPass:
    """One forward pass over a decoding step and prefill rows together (vLLM's mixed batches): the model
    is given one row of tokens, first the next token of each of the running batch's rows, then each prefill
    row's new prompt tokens, and this object as its cache (`update`) and its attention (`mixed=`).

    A prefill pass alone cost as much fixed work as a decoding step (every layer's weights read, every
    operation dispatched; about 60 ms on SmolLM2-135M): under concurrent load a server ran one such pass
    for almost every new request. Here the prompt tokens ride along with the step, and need no padding.

    `decode`: the running batch's cache (slot layers, `serve/batch.py`), one column appended per step;
    `mask` [rows, keys] its mask, the new column included; `spans` its attention runs. `prefill`: a cache
    whose layers this pass fills; `heads`: each prefill row's cached keys and values per layer (or None),
    `parts` its (head length, new tokens). After the pass, `prefill`'s layers hold every prefill row's
    head and new tokens together, left-padded to the longest (`width`), as a batch that joins the running
    one (a row's padding is all on its left: none between its head and its new tokens, which every later
    decoding step would read)."""

    def __init__(self, decode, mask: torch.Tensor | None, spans, prefill, heads: list, parts: list[tuple[int, int]]):
        self.decode, self.spans, self.prefill, self.heads, self.parts = decode, spans, prefill, heads, parts
        self.n = 0 if mask is None else mask.shape[0]
        self.mask = None if mask is None else mask.bool().view(self.n, 1, 1, mask.shape[1])
        self.width = max(h + m for h, m in parts)
        self.offsets, at = [], self.n
        for _, m in parts:
            self.offsets.append(at)
            at += m

    def update(self, key, value, layer_idx: int, *args, **kwargs):
        """The model's cache update: the decoding rows' new column into their slots; each prefill row's head
        and new tokens into the prefill batch. Returns the pass's own keys and values (what `attention`
        reads)."""
        n = self.n
        if n:
            self.decode.layers[layer_idx].update(key[0, :, :n].transpose(0, 1).unsqueeze(2),
                                                 value[0, :, :n].transpose(0, 1).unsqueeze(2))
        w = self.width
        shape = (len(self.parts), key.shape[1], w, key.shape[3])
        keys, values = key.new_empty(shape), value.new_empty(shape)
        for j, ((h, m), at, head) in enumerate(zip(self.parts, self.offsets, self.heads)):
            start = w - h - m
            if start:  # left padding: never attended to, but kept finite (0 x NaN is NaN)
                keys[j, :, :start], values[j, :, :start] = 0, 0
            if h:
                keys[j, :, start:start + h], values[j, :, start:start + h] = head[layer_idx][0][0], head[layer_idx][1][0]
            keys[j, :, w - m:], values[j, :, w - m:] = key[0, :, at:at + m], value[0, :, at:at + m]
        layer = self.prefill.layers[layer_idx]
        layer.keys, layer.values = keys, values
        return key, value

    def attention(self, layer_idx: int, query, key, value, scaling):
        """The decoding rows over their slots (`_decode_rows`), each prefill row causally over its new
        tokens and over its head, merged by log-sum-exp (`_prefill_rows`' way)."""
        _, h, t, d = query.shape
        out = query.new_empty((1, t, h, d))
        n = self.n
        if n:
            layer = self.decode.layers[layer_idx]
            kvh = layer.keys.shape[1]
            q = query[0, :, :n].transpose(0, 1).reshape(n, kvh, h // kvh, d)
            out[0, :n] = _decode_rows(q, layer.keys, layer.values, self.mask, self.spans, 0.0, scaling).view(n, h, d)
        batch, w = self.prefill.layers[layer_idx], self.width
        for j, ((head, m), at) in enumerate(zip(self.parts, self.offsets)):
            o = _row_attention(query[:, :, at:at + m], key[:, :, at:at + m], value[:, :, at:at + m],
                               batch.keys[j:j + 1, :, w - m - head:w - m], batch.values[j:j + 1, :, w - m - head:w - m],
                               scaling)
            out[0, at:at + m] = o[0].transpose(0, 1)
        return out, None


class SharedPrefix:
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

    def stacked(self, layer: int, rows: list[int], dtype: torch.dtype):
        """Layer `layer`'s K/V of the roots of `rows` (single-row roots), right-padded into one batch, and
        the additive mask of the padding. Built per forward pass and not kept: it holds one layer's copy
        of those roots at a time, never the whole cache twice."""
        ks = [self.roots[j].cache.layers[layer].keys[0] for j in rows]
        vs = [self.roots[j].cache.layers[layer].values[0] for j in rows]
        n = max(k.shape[1] for k in ks)
        pad = torch.nn.functional.pad
        keys = torch.stack([pad(k, (0, 0, 0, n - k.shape[1])) for k in ks])
        values = torch.stack([pad(v, (0, 0, 0, n - v.shape[1])) for v in vs])
        lengths = torch.tensor([k.shape[1] for k in ks], device=keys.device)
        bias = torch.zeros((len(rows), 1, 1, n), dtype=dtype, device=keys.device)
        bias.masked_fill_(torch.arange(n, device=keys.device).view(1, 1, 1, n) >= lengths.view(-1, 1, 1, 1),
                          torch.finfo(dtype).min)
        return keys, values, bias

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


def _merged(out, lse, other, lse_other):
    """Attention over two disjoint key sets, from each one's output and log-sum-exp of scores."""
    total = torch.logaddexp(lse, lse_other)
    return out * torch.exp(lse - total).unsqueeze(-1).to(out.dtype) \
        + other * torch.exp(lse_other - total).unsqueeze(-1).to(out.dtype)


def _cascade_attention(module, query, key, value, shared: SharedPrefix, scaling):
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
    runs = shared.runs
    singles = [a for _, a, z in runs if z - a == 1]
    if len(singles) > 1:  # roots of one row each (a diff's hunks): one padded call instead of one per root
        runs = [r for r in runs if r[2] - r[1] > 1]
        keys, values, bias = shared.stacked(li, singles, query.dtype)
        o_s, lse_s = _attention_lse(q[singles], keys, values, bias, scaling)
        at = torch.tensor(singles, device=q.device)
        out[at] = _merged(out[at], lse[at], o_s, lse_s)
    for root, a, z in runs:
        layer = root.cache.layers[li]
        n = z - a
        qr = q[a:z].transpose(0, 1).reshape(1, kvh, n * rep * w, d)
        o_r, lse_r = _attention_lse(qr, layer.keys, layer.values, None, scaling)
        o_r = o_r.view(kvh, n, rep * w, d).transpose(0, 1)
        lse_r = lse_r.view(kvh, n, rep * w).transpose(0, 1)
        out[a:z] = _merged(out[a:z], lse[a:z], o_r, lse_r)
    return out.reshape(b, h, w, d).transpose(1, 2).contiguous(), None
