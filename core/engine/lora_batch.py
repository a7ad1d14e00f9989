"""Rows of different LoRA adapters in one forward pass, as a few dense matmuls per layer.

peft runs a mixed-adapter batch (`adapter_names=`) adapter by adapter in every LoRA layer: it lists each
adapter's row indices in Python, gathers those rows, runs the adapter's two matmuls on them and adds the
result back by index; and before every pass it registers a hook on every LoRA layer to hand it the names.
With four adapters over 8 layers x 3 modules that is about 400 small operations per forward pass, a fifth
to a third of a decoding step on 2 CPU cores. And where the base runs in bfloat16, peft keeps adapter
weights in float32 (`autocast_adapter_dtype`), so the LoRA matmuls of a prefill pass left the fast
bfloat16 kernels.

Here each layer keeps its adapters' weights stacked, zero-padded to the largest rank r, in the dtype of
its input: A as [k r, in] and B as [out, k r] for k adapters. A pass computes every adapter's low-rank
projection for every row in one matmul, keeps each row's own adapter's r columns (scaled by its
`scaling`; zero for rows of the base) and projects back in a second:

    delta = ((x @ A_all.T) * keep[row]) @ B_all.T

Zero-padded ranks and the other adapters' columns add exactly nothing. A prefill pass (16 tokens a row
or more) instead gives each run of consecutive rows of one adapter only its adapter's two matmuls: the
dense form would compute k adapters' projections for every prompt token. When k r is large (many adapters
of high rank), each row's A and B are gathered and multiplied by batched matmuls instead (as in Punica's
and S-LoRA's kernels), which costs no more than the row's own rank. The stack is built on first use and
again whenever an adapter is added or removed or a weight changes in place (its version counter).

`rows_of_adapters(model, names)` runs the passes inside it with row i under adapter `names[i]` without
peft's per-pass hooks, where every adapter layer of the model is plain LoRA on `nn.Linear` (no
`modules_to_save` copies, which need peft's own routing: there `adapter_names=` is passed as before and
reaches the same batched layers; a row whose adapter has no copy of such a module takes the original, as
it does alone). Anything else (DoRA and other variants, embedding or convolution
layers, merged adapters, training) keeps peft's own path.
"""

from __future__ import annotations

import contextlib
import threading
import types

import torch

DENSE_MAX = 256  # k r up to which all adapters' projections are computed for every row
PREFILL_TOKENS = 16  # tokens per row from which each run of rows of one adapter gets only its own update
SMALL_ROWS = 64  # token rows up to which a bfloat16 model's LoRA matmuls run in float32 on the CPU

_local = threading.local()


def _plain_lora(layer) -> bool:
    from peft.tuners.lora.layer import Linear

    return (type(layer) is Linear and not getattr(layer, "lora_variant", None)
            and not any(getattr(layer, "use_dora", {}).values()))


def _plain(layer) -> bool:
    return not layer.training and not getattr(layer, "merged_adapters", None) and _plain_lora(layer)


def _versions(tensors: list[torch.Tensor]) -> int:
    """The sum of the tensors' in-place version counters (inference tensors keep none: 0)."""
    total = 0
    for t in tensors:
        if not t.is_inference():
            total += t._version
    return total


def _stack(layer, dtype: torch.dtype) -> dict:
    mods_a, mods_b = layer.lora_A._modules, layer.lora_B._modules
    stacks = layer.__dict__.setdefault("_peft_apps_stacks", {})
    cached = stacks.get(dtype)
    if (cached is not None and len(mods_a) == len(cached["mods"])
            and all(mods_a.get(n) is a and mods_b.get(n) is b for n, (a, b) in cached["mods"].items())
            and _versions(cached["params"]) == cached["version"]
            and all(float(layer.scaling[n]) == s for n, s in cached["scaling"].items())):
        return cached
    names = sorted(mods_a)
    params = [t for n in names for t in (mods_a[n].weight, mods_b[n].weight)]
    rank = max((mods_a[n].weight.shape[0] for n in names), default=1)
    k, dev = len(names), layer.base_layer.weight.device
    a_all = torch.zeros((k, rank, layer.in_features), dtype=dtype, device=dev)
    b_all = torch.zeros((k, layer.out_features, rank), dtype=dtype, device=dev)
    with torch.no_grad():
        for i, n in enumerate(names):
            a, b = mods_a[n].weight, mods_b[n].weight
            a_all[i, :a.shape[0]] = a.to(dtype)
            b_all[i, :, :b.shape[1]] = b.to(dtype)
    scaling = {n: float(layer.scaling[n]) for n in names}
    cached = {"mods": {n: (mods_a[n], mods_b[n]) for n in names}, "params": params,
              "version": _versions(params), "scaling": scaling, "index": {n: i for i, n in enumerate(names)},
              "rank": rank, "k": k, "rows": {},
              "scale": torch.tensor([scaling[n] for n in names] + [0.0], dtype=dtype, device=dev)}
    if k * rank <= DENSE_MAX:  # dense: A_all [k r, in], B_all [out, k r]; each B [out, r] for prefill
        cached["a_flat"] = a_all.reshape(k * rank, -1)
        cached["b_flat"] = b_all.permute(1, 0, 2).reshape(layer.out_features, -1)
        cached["b_each"] = b_all
    else:  # gathered: A [k + 1, r, in], B [k + 1, out, r], the last entry zero (the base)
        cached["a"] = torch.cat([a_all, a_all.new_zeros((1, rank, layer.in_features))])
        cached["b"] = torch.cat([b_all, b_all.new_zeros((1, layer.out_features, rank))])
    stacks[dtype] = cached
    return cached


def _rows(stack: dict, names: tuple, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's entry in the stack (k: the zero entry, for the base and adapters this layer lacks),
    and its [rows, k r] keep-mask of scalings."""
    got = stack["rows"].get(names)
    if got is None:
        if len(stack["rows"]) > 64:
            stack["rows"].clear()
        k, r = stack["k"], stack["rank"]
        idx = torch.tensor([stack["index"].get(n, k) for n in names], dtype=torch.long, device=device)
        keep = torch.zeros((len(names), k + 1, r), dtype=stack["scale"].dtype, device=device)
        keep[torch.arange(len(names), device=device), idx] = stack["scale"][idx].view(-1, 1)
        got = stack["rows"][names] = (idx, keep[:, :k].reshape(len(names), k * r))
    return got


def _with_lora(self, x: torch.Tensor, names: tuple, result: torch.Tensor) -> torch.Tensor:
    """The base layer's output `result` (the caller's own) plus each row's LoRA update."""
    # a few rows (a decoding step) in float32 on the CPU: there a small bfloat16 matmul costs 2-3x a
    # float32 one (kernel setup), a large one a third
    small = x.device.type == "cpu" and x.dtype != torch.float32 and x.numel() <= SMALL_ROWS * x.shape[-1]
    dtype = torch.float32 if small else x.dtype
    stack = _stack(self, dtype)
    idx, keep = _rows(stack, names, x.device)
    rows = x.reshape(x.shape[0], -1, x.shape[-1]).to(dtype)
    if "a_flat" not in stack:  # the gathered form (k r past DENSE_MAX when the stack was built)
        low = torch.bmm(rows, stack["a"][idx].transpose(1, 2))
        delta = torch.bmm(low, stack["b"][idx].transpose(1, 2)) * stack["scale"][idx].view(-1, 1, 1)
        return result + delta.view(result.shape).to(result.dtype)
    if rows.shape[1] >= PREFILL_TOKENS and stack["k"] > 1 and result.dtype == dtype and result.is_contiguous():
        return _by_runs(stack, names, rows, result)
    low = torch.nn.functional.linear(rows, stack["a_flat"]) * keep.unsqueeze(1)
    if result.dtype == dtype and result.is_contiguous():  # B's product added in place, by the matmul
        result.view(-1, result.shape[-1]).addmm_(low.view(-1, low.shape[-1]), stack["b_flat"].t())
        return result
    return result + torch.nn.functional.linear(low, stack["b_flat"]).view(result.shape).to(result.dtype)


def _by_runs(stack: dict, names: tuple, rows: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
    """A prefill pass (many tokens per row): each run of consecutive rows of one adapter gets only its
    adapter's update, where the dense form computed every adapter's for every token (k times the work)."""
    out = result.view(rows.shape[0], -1, result.shape[-1])
    a = 0
    for z in range(1, len(names) + 1):
        if z < len(names) and names[z] == names[a]:
            continue
        i = stack["index"].get(names[a])
        if i is not None:
            _add_own(stack, i, rows[a:z].reshape(-1, rows.shape[-1]), out[a:z].view(-1, out.shape[-1]))
        a = z
    return result


def _add_own(stack: dict, i: int, x: torch.Tensor, out: torch.Tensor) -> None:
    """Adapter `i`'s update of the tokens `x` [tokens, in], added into `out` [tokens, out] in place."""
    r = stack["rank"]
    if "a_flat" in stack:
        a, b = stack["a_flat"][i * r:(i + 1) * r], stack["b_each"][i]
    else:
        a, b = stack["a"][i], stack["b"][i]
    low = torch.nn.functional.linear(x, a) * stack["scale"][i]
    if out.dtype == low.dtype:
        out.addmm_(low, b.t())
    else:
        out += torch.nn.functional.linear(low, b).to(out.dtype)


def _mixed_batch_forward(self, x: torch.Tensor, *args, adapter_names: list[str], **kwargs) -> torch.Tensor:
    if not _plain(self):
        return type(self)._mixed_batch_forward(self, x, *args, adapter_names=adapter_names, **kwargs)
    for k in [k for k in kwargs if k.startswith("alora")]:
        kwargs.pop(k)
    return _with_lora(self, x, tuple(adapter_names), self.base_layer(x, *args, **kwargs))


def _forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    names = getattr(_local, "names", None)
    if names is None or self.disable_adapters or "adapter_names" in kwargs:
        return type(self).forward(self, x, *args, **kwargs)
    runs = getattr(_local, "runs", None)
    if runs is not None:  # one row of tokens: the first len(names) one per decoding row, then runs
        if not _plain(self):
            raise RuntimeError("a pass of token runs needs plain LoRA layers")
        return _with_runs(self, x, names, runs, self.base_layer(x, *args, **kwargs))
    if not _plain(self):  # merged or training: peft's own mixed path (which refuses what it cannot mix)
        return type(self).forward(self, x, *args, adapter_names=list(names), **kwargs)
    return _with_lora(self, x, names, self.base_layer(x, *args, **kwargs))


def _with_runs(self, x: torch.Tensor, names: tuple, runs: list[tuple[int, int, str]], result: torch.Tensor
               ) -> torch.Tensor:
    """A pass over one row of tokens (`attention.MixedPass`): its first `len(names)` tokens, one per
    decoding row, each under its own adapter (`_with_lora`, as a decoding step); then runs of tokens
    [start, end) of one adapter each, which get only that adapter's update (as `_by_runs`)."""
    flat, out = x.reshape(-1, x.shape[-1]), result.view(-1, result.shape[-1])
    n = len(names)
    if n:
        mine = out[:n].unsqueeze(1)
        got = _with_lora(self, flat[:n].unsqueeze(1), names, mine)
        if got is not mine:
            out[:n] = got.view(n, -1)
    stack = _stack(self, x.dtype)
    for start, end, name in runs:
        i = stack["index"].get(name)
        if i is not None:
            _add_own(stack, i, flat[start:end], out[start:end])
    return result


def _own_copy_or_original(self, x: torch.Tensor, adapter: str, *args, **kwargs) -> torch.Tensor:
    """A `modules_to_save` copy in a mixed batch: rows of an adapter without a copy of this module take
    the original (as they do alone), where peft looked the adapter up and failed (KeyError)."""
    if adapter not in self.modules_to_save:
        return self.original_module(x, *args, **kwargs)
    return self.modules_to_save[adapter](x, *args, **kwargs)


def install_lora_batching(model) -> bool:
    """Batch mixed-adapter passes of `model`'s plain LoRA linear layers (see the module docstring).
    Returns whether `rows_of_adapters` can route them (every adapter layer plain LoRA on nn.Linear)."""
    if not hasattr(model, "peft_config"):
        return False
    from peft.tuners.lora.layer import Linear
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    routable = True
    for module in model.modules():
        if type(module) is Linear:
            module._mixed_batch_forward = types.MethodType(_mixed_batch_forward, module)
            module.forward = types.MethodType(_forward, module)
            routable = routable and _plain_lora(module)
        elif isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            routable = False
            if hasattr(module, "_forward_wrapped_mixed_batch") and hasattr(module, "modules_to_save"):
                module._forward_wrapped_mixed_batch = types.MethodType(_own_copy_or_original, module)
    model._peft_apps_rows = routable
    return routable


@contextlib.contextmanager
def rows_of_adapters(model, names: list[str], runs: list[tuple[int, int, str]] | None = None):
    """Forward passes inside run row i under adapter `names[i]` ("__base__": none). Yields the keyword
    arguments to pass the model: none where the layers read the names themselves, else peft's
    `adapter_names`. Given `runs`, the pass is one row of tokens: the first `len(names)` tokens under
    `names`, one each, then each run `(start, end, adapter)` of tokens (plain LoRA layers only)."""
    if not getattr(model, "_peft_apps_rows", False):
        if runs is not None:
            raise ValueError("token runs need every adapter layer plain LoRA (rows_routable)")
        yield {"adapter_names": list(names)}
        return
    prev = getattr(_local, "names", None), getattr(_local, "runs", None)
    _local.names, _local.runs = tuple(names), runs
    try:
        yield {}
    finally:
        _local.names, _local.runs = prev


def rows_routable(model) -> bool:
    """Whether `rows_of_adapters` routes `model`'s passes itself (every adapter layer plain LoRA)."""
    return bool(getattr(model, "_peft_apps_rows", False))
