"""The matmuls of a model the engine serves on a CPU: linear layers' rows in a few bucket sizes, bfloat16
weights prepacked for oneDNN (on CPUs without AMX: copied to float32 for long products, packed for the
engine's own kernel for short ones), the gated MLP's activation in place, and the output layer's input
packed.

Buckets. torch runs bfloat16 (and float16) matmuls on the CPU through oneDNN, which compiles a kernel for
every new matrix shape: 2.8 ms for a [M, 512] x [512, 1376] product whose cached kernel then takes
0.2-0.4 ms. A server meets a new M at almost every prefill pass (rows x tokens) and at every new batch
size, so a run of a few dozen requests spent more time compiling kernels than multiplying. Here a linear
layer's input rows are padded with zeros up to the next bucket (exact up to 64 rows, then multiples of 16
up to 256, of 64 up to 1024, of 256 beyond) and the output sliced back: about a hundred shapes over a
server's life. Decoding steps (a row per running request, at most `--max-batch`) keep their rows: a
prepacked product's kernel for a new row count took 0.7-1.1 ms to compile, once, while its time grows
with the rows (SmolLM2-135M's linear layers took 57 ms at 24 rows, 74 ms at 32), and padding 17-31 rows
up to 32 had cost a step up to 22 ms. A row's products are those of a matmul of the bucket's size
(kernels may round a row a bfloat16 ulp differently by matrix size, as they do by batch size without
buckets). Float32 matmuls go through MKL, which compiles nothing, and are left alone, as are the float32
products below. The q/k/v projections (and gate/up) read one input: it is padded once.

Prepacked bfloat16 weights. Without them oneDNN reorders a weight into its blocked layout at every call:
a [20, 512] x [512, 1376] product took 64 us, 36 us with the weight packed once (`mkldnn._linear_pointwise`
on `mkldnn._reorder_linear_weight`, the kernels torch's compiler uses), 60 against 27 us for one row,
3.0 against 2.1 ms for 4,556 rows; the numbers are plain `linear`'s, bit for bit (checked at first use).
The packed copy doubles the linear weights' memory: it is made when they take at most a quarter of the
machine's memory, and again when a weight changes in place.

Float32 products without AMX. Where the CPU has no AMX, oneDNN's bfloat16 kernels (AVX-512 BF16 dot
products) ran a prefill pass's products at 60-70% of MKL's float32 pace on the same shapes: a [512, 576] x
[576, 1536] product took 5.4 ms in bfloat16, 3.2 ms as float32 on a float32 copy of the weight (the input
converted, the output rounded back). Each product of a bfloat16 value pair is exact in float32 and both
sum in float32, so the two differ only in the order of the sums, as kernels of two matrix sizes do. There,
products of `UPCAST_ROWS` rows or more (prefill; their rows not padded) run on a float32 copy of each
weight, made at first use when the copies fit in a quarter of the machine's memory; fewer rows (decoding)
run on the engine's kernel (below). A SmolLM2-135M prefill pass of 64-512 tokens took 1.23-1.32x less
time.

The engine's kernel without AMX. oneDNN's bfloat16 kernels there are built on AVX-512 BF16's dot product,
which issued at half the rate of float32 FMAs on the Xeon measured (86 against 175 GFLOP/s per core).
Products of fewer than `UPCAST_ROWS` rows (decoding steps) run on `native.linear_bf16` (`linear_bf16.c`):
the weight packed once, kept bfloat16 in memory and widened to float32 in registers, the rows multiplied by
FMAs. SmolLM2-135M's linear layers took 1.44-1.57x less time than on oneDNN's prepacked weights at 1 to
48 rows, a decoding step 1.3-1.4x less at 24 rows and 1.1x at 2. Each output sums its row's products in
float32 in the order of the inputs, whatever the batch: no padding, and a row's numbers do not depend on
the rows beside it. Layers with a bias, widths not a multiple of 16, CPUs without AVX-512 BF16 (where it
does not build) and `PEFT_APPS_NATIVE_LINEAR=0` keep oneDNN.

Gated MLP in place. Llama's `down(silu(gate(x)) * up(x))` allocated two more [tokens, intermediate]
tensors per layer; in bfloat16 the activation and product took longer than the three matmuls of a
prefill pass. Without autograd they run in place on the gate's output: the same numbers.

Packed head input. Models slice the last position's hidden states for the output layer
(`logits_to_keep=1`), a strided view in a multi-token pass; torch's CPU matmul then broadcasts and copies
the weight for every row instead of running one matrix product: in bfloat16, 41 ms where the packed input
takes 0.3 ms.
"""

from __future__ import annotations

import threading
import types

import torch

from . import native


def bucket(m: int) -> int:
    """The number of rows a matmul of `m` rows is padded to."""
    for limit, step in ((64, 1), (256, 16), (1024, 64)):
        if m <= limit:
            return -(-m // step) * step
    return -(-m // 256) * 256


_last = threading.local()  # the last input padded, and its padded rows (q/k/v, gate/up read one input)


def _padded(x: torch.Tensor, m: int, size: int) -> torch.Tensor:
    """`x`'s rows and zeros up to `size` rows; the last input's padded rows again when it is the same
    tensor, unchanged (inference tensors keep no version counter: the same object counts as unchanged; a
    model does not write into a layer's input between the projections reading it). Kept only without
    autograd (rows made in inference mode cannot enter a graph)."""
    keep = not torch.is_grad_enabled()
    version = None if x.is_inference() else x._version
    if keep and getattr(_last, "x", None) is x and _last.version == version and _last.rows.shape[0] == size:
        return _last.rows
    rows = x.new_empty((size, x.shape[-1]))
    rows[:m] = x.reshape(m, x.shape[-1])
    rows[m:].zero_()
    if keep:
        _last.x, _last.version, _last.rows = x, version, rows
    return rows


def _prepacked(self) -> torch.Tensor | None:
    """The layer's bfloat16 weight in oneDNN's blocked layout, packed once (again if the weight changes in
    place or is replaced); None where this layer is not packed or grad is on."""
    if not getattr(self, "_peft_apps_pack_ok", False) or torch.is_grad_enabled() or not _can_pack():
        return None
    return _per_weight(self, "_peft_apps_pack", lambda w: torch.ops.mkldnn._reorder_linear_weight(w, 32))


def _per_weight(layer, attr: str, make):
    """`make(weight)` for the layer's weight as it is now, kept on the layer as `attr` and made again when
    the weight changes in place or is replaced."""
    w = layer.weight
    key = (w.data_ptr(), None if w.is_inference() else w._version, w.shape)
    got = getattr(layer, attr, None)
    if got is None or got[0] != key:
        got = (key, make(w.detach()))
        setattr(layer, attr, got)
    return got[1]


def _bucketed(self, x: torch.Tensor) -> torch.Tensor:
    m = x.numel() // x.shape[-1] if x.dim() else 0
    if not m or x.device.type != "cpu":
        return torch.nn.functional.linear(x, self.weight, self.bias)
    if _upcasts(self, m):  # MKL compiles nothing: the rows as they are
        w, b = _upcast(self)
        return torch.nn.functional.linear(x.float(), w, b).to(x.dtype)
    native_weight = _native(self, m)
    if native_weight is not None:  # nor does the engine's kernel
        return native.linear_bf16(x.reshape(m, x.shape[-1]), native_weight).view(*x.shape[:-1], -1)
    size, weight = bucket(m), _prepacked(self)
    if weight is None and size == m:
        return torch.nn.functional.linear(x, self.weight, self.bias)
    rows = _padded(x, m, size) if size != m else x.reshape(m, x.shape[-1]).contiguous()
    return _product(self, rows, weight)[:m].view(*x.shape[:-1], -1)


def _gated_mlp(self, x: torch.Tensor) -> torch.Tensor:
    """A SiLU-gated MLP (Llama's) without autograd: the activation and the product in place, the same
    numbers without allocating two more [tokens, intermediate] tensors per layer. Where all three
    projections are bucketed without bias, the down projection reads the gate's padded rows as they are
    (zero in, zero out: silu(0) x 0 is 0), not a padded copy of them."""
    if torch.is_grad_enabled():
        return type(self).forward(self, x)
    layers = (self.gate_proj, self.up_proj, self.down_proj)
    m = x.numel() // x.shape[-1] if x.dim() else 0
    size = m if not m or _upcasts(self.gate_proj, m) or _native(self.gate_proj, m) is not None else bucket(m)
    if size == m or x.device.type != "cpu" or not all(_bucketed_layer(p) for p in layers):
        gate = torch.nn.functional.silu(self.gate_proj(x), inplace=True)
        return self.down_proj(gate.mul_(self.up_proj(x)))
    rows = _padded(x, m, size)
    gate = _product(self.gate_proj, rows, _prepacked(self.gate_proj))
    torch.nn.functional.silu(gate[:m], inplace=True).mul_(
        _product(self.up_proj, rows, _prepacked(self.up_proj))[:m])  # the up product freed before `down`
    return _product(self.down_proj, gate, _prepacked(self.down_proj))[:m].view(*x.shape[:-1], -1)


def _bucketed_layer(layer) -> bool:
    return (type(layer) is torch.nn.Linear and layer.bias is None
            and getattr(layer.forward, "__func__", None) is _bucketed)


def _product(layer, rows: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """A bucketed layer's product of rows already padded to a bucket: oneDNN's on the `weight` it packed
    (`_prepacked`), or plain `linear` where there is none. (Float32 products and the engine's kernel take
    their rows unpadded: `_bucketed`.)"""
    if weight is None:
        return torch.nn.functional.linear(rows, layer.weight, layer.bias)
    return torch.ops.mkldnn._linear_pointwise(rows, weight, layer.bias, "none", [], "")


# Without AMX, a bfloat16 product of this many rows or more runs in float32 on a float32 copy of the weight
UPCAST_ROWS = 64


def _native(layer, m: int) -> torch.Tensor | None:
    """The layer's weight packed for the engine's kernel (`native.linear_bf16`), where a product of `m` rows
    runs there: fewer than `UPCAST_ROWS` rows on a CPU without AMX, without autograd; else None."""
    if m >= UPCAST_ROWS or not getattr(layer, "_peft_apps_native_ok", False) or torch.is_grad_enabled():
        return None
    return _per_weight(layer, "_peft_apps_native", native.pack_linear)


def _upcasts(layer, m: int) -> bool:
    """Whether the layer's product of `m` rows runs in float32 on its weight's float32 copy."""
    return m >= UPCAST_ROWS and getattr(layer, "_peft_apps_upcast_ok", False) and not torch.is_grad_enabled()


def _upcast(layer) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layer's weight and bias as float32, copied once (again if the weight changes in place or is
    replaced)."""
    return _per_weight(layer, "_peft_apps_f32",
                       lambda w: (w.float(), None if layer.bias is None else layer.bias.detach().float()))


def packed(x: torch.Tensor) -> torch.Tensor:
    """`x` with a row-major layout: the strides of a fresh tensor of its shape, size-1 dimensions included
    (`contiguous()` keeps a view whose size-1 dimensions have other strides)."""
    want, step = [], 1
    for size in reversed(x.shape):
        want.append(step)
        step *= size
    return x if tuple(reversed(want)) == x.stride() else x.clone(memory_format=torch.contiguous_format)


def install_matmuls(model) -> int:
    """Pack the output layer's input; run SiLU-gated MLPs in place; bucket the rows of the plain `nn.Linear`
    layers whose weights are bfloat16 or float16 on the CPU (bfloat16 ones prepacked). Returns how many
    layers are bucketed."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if isinstance(head, torch.nn.Module) and not getattr(head, "_peft_apps_packed", False):
        head.register_forward_pre_hook(lambda _m, args: (packed(args[0]), *args[1:]) if args else None)
        head._peft_apps_packed = True
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear and m.weight.device.type == "cpu"
               and m.weight.dtype in (torch.bfloat16, torch.float16)]
    pack = sum(m.weight.numel() * 2 for m in linears) <= _memory() // 4  # and `_can_pack()`, at first use
    for module in model.modules():
        if (all(isinstance(getattr(module, k, None), torch.nn.Module) for k in ("gate_proj", "up_proj", "down_proj"))
                and type(getattr(module, "act_fn", None)).__name__ in ("SiLU", "SiLUActivation")
                and "forward" not in vars(module.act_fn)
                and "forward" not in vars(module)):
            module.forward = types.MethodType(_gated_mlp, module)
    upcast = sum(m.weight.numel() * 4 for m in linears) <= _memory() // 4 and not _amx()  # float32 copies
    for module in linears:
        module.forward = types.MethodType(_bucketed, module)
        module._peft_apps_pack_ok = pack and module.weight.dtype == torch.bfloat16
        module._peft_apps_upcast_ok = upcast and module.weight.dtype == torch.bfloat16
        module._peft_apps_native_ok = (pack and not _amx() and module.weight.dtype == torch.bfloat16
                                       and module.bias is None)
    return len(linears)


_PACK: list[bool] = []


def _can_pack() -> bool:
    """Whether this torch has oneDNN's prepacked linear and it gives plain `linear`'s numbers. Checked once,
    on first use, by the thread that runs the model: a oneDNN call on the main thread of a server whose
    worker thread runs the model made every later pass of that worker slower (float32 ones included)."""
    if not _PACK:
        try:
            w, x = torch.ones((32, 16), dtype=torch.bfloat16), torch.ones((3, 16), dtype=torch.bfloat16)  # host: a CPU check
            got = torch.ops.mkldnn._linear_pointwise(x, torch.ops.mkldnn._reorder_linear_weight(w, 32), None, "none",
                                                     [], "")
            _PACK.append(torch.equal(got, torch.nn.functional.linear(x, w)))
        except (AttributeError, RuntimeError, NotImplementedError):
            _PACK.append(False)
    return _PACK[0]


def _amx() -> bool:
    is_amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(is_amx and is_amx())


def _memory() -> int:
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0
