"""The engine's attention routing, installed on a model it serves (`install_attention`):

- shared-prefix (cascade) attention for a forward pass given `shared_prefix=`: each row attends over its
  root prefix's K/V in place and over its private tokens, the two merged by log-sum-exp;
- SDPA with grouped-query heads on the CPU without copying K/V per query group (`_sdpa_gqa`), one
  decoding step by runs of rows (`row_spans`), a server's prefill pass row by row (`row_parts`);
- the model's own attention function otherwise.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

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
        # one decoding step: a KV head's query group as `groups` queries of one row against its keys, read
        # in place (no copy per group, no causal mask needed: every key is in the query's past)
        b, h, _, d = query.shape
        kvh, n = key.shape[1], key.shape[2]
        q = query.view(b, kvh, h // kvh, d)
        spans = kwargs.get("row_spans") or [(0, b, 0)]
        out = q.new_empty(q.shape) if len(spans) > 1 else None
        for a, z, col in spans:  # runs of rows, each from its first used column (`serve/batch.py`)
            mask = attention_mask[a:z, :, :, col:].expand(z - a, 1, 1, n - col).expand(z - a, 1, h // kvh, n - col)
            o = torch.nn.functional.scaled_dot_product_attention(q[a:z], key[a:z, :, col:], value[a:z, :, col:],
                                                                 attn_mask=mask, dropout_p=dropout, scale=scaling)
            if out is None:
                out = o
            else:
                out[a:z] = o
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


def _prefill_rows(query, key, value, parts: list[tuple[int, int]], scaling):
    """A prefill pass row by row (`row_parts`: each row's cached head length and new token count, the
    layout of the scheduler's passes: heads right-aligned in the first `key_len - q_len` columns, new tokens
    right-aligned in the rest). A row's new tokens attend causally to themselves without a mask (the
    kernel skips the blocks above the diagonal) and to their head without one, the two merged by
    log-sum-exp. The batched masked call computed every padded and future block and converted the
    boolean mask to an additive one in every layer: twice the work."""
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    b, h, w, d = query.shape
    first = key.shape[2] - w
    out = query.new_zeros(query.shape)
    for j, (head, n) in enumerate(parts):
        if n <= 0:
            continue
        q = query[j:j + 1, :, w - n:]
        o, lse = op(q, key[j:j + 1, :, key.shape[2] - n:], value[j:j + 1, :, key.shape[2] - n:],
                    is_causal=True, scale=scaling)[:2]
        if head > 0:
            o_h, lse_h = op(q, key[j:j + 1, :, first - head:first], value[j:j + 1, :, first - head:first],
                            scale=scaling)[:2]
            o = _merged(o, lse, o_h, lse_h)
        out[j:j + 1, :, w - n:] = o
    return out.transpose(1, 2).contiguous()


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

    shared = kwargs.pop("shared_prefix", None)
    if shared is not None:
        return _cascade_attention(module, query, key, value, shared, kwargs.get("scaling"))
    if impl == "sdpa" and query.device.type == "cpu":
        return _sdpa_gqa(module, query, key, value, attention_mask, **kwargs)
    return ALL_ATTENTION_FUNCTIONS[impl](module, query, key, value, attention_mask, **kwargs)


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
