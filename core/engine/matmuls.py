"""The matmuls of a model the engine serves on a CPU: linear layers' rows in a few bucket sizes, and
the output layer's input packed.

Buckets. torch runs bfloat16 (and float16) matmuls on the CPU through oneDNN, which compiles a kernel for
every new matrix shape: 2.8 ms for a [M, 512] x [512, 1376] product whose cached kernel then takes
0.2-0.4 ms. A server meets a new M at almost every prefill pass (rows x tokens) and at every new batch
size, so a run of a few dozen requests spent more time compiling kernels than multiplying. Here a linear
layer's input rows are padded with zeros up to the next bucket (exact up to 16 rows, then multiples of 16
up to 256, of 64 up to 1024, of 256 beyond) and the output sliced back: a few dozen shapes over a
server's life. A row's products are those of a matmul of the bucket's size (kernels may round a row a
bfloat16 ulp differently by matrix size, as they do by batch size without buckets). Float32 matmuls go
through MKL, which compiles nothing, and are left alone.

Packed head input. Models slice the last position's hidden states for the output layer
(`logits_to_keep=1`), a strided view in a multi-token pass; torch's CPU matmul then broadcasts and copies
the weight for every row instead of running one matrix product: in bfloat16, 41 ms where the packed input
takes 0.3 ms.
"""

from __future__ import annotations

import types

import torch


def bucket(m: int) -> int:
    """The number of rows a matmul of `m` rows is padded to."""
    for limit, step in ((16, 1), (256, 16), (1024, 64)):
        if m <= limit:
            return -(-m // step) * step
    return -(-m // 256) * 256


def _bucketed(self, x: torch.Tensor) -> torch.Tensor:
    m = x.numel() // x.shape[-1] if x.dim() else 0
    size = bucket(m) if m else 0
    if size == m or x.device.type != "cpu":
        return torch.nn.functional.linear(x, self.weight, self.bias)
    rows = x.new_zeros((size, x.shape[-1]))
    rows[:m] = x.reshape(m, x.shape[-1])
    return torch.nn.functional.linear(rows, self.weight, self.bias)[:m].view(*x.shape[:-1], -1)


def packed(x: torch.Tensor) -> torch.Tensor:
    """`x` with a row-major layout: the strides of a fresh tensor of its shape, size-1 dimensions included
    (`contiguous()` keeps a view whose size-1 dimensions have other strides)."""
    want, step = [], 1
    for size in reversed(x.shape):
        want.append(step)
        step *= size
    return x if tuple(reversed(want)) == x.stride() else x.clone(memory_format=torch.contiguous_format)


def install_matmuls(model) -> int:
    """Pack the output layer's input; bucket the rows of the plain `nn.Linear` layers whose weights are
    bfloat16 or float16 on the CPU. Returns how many layers are bucketed."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if isinstance(head, torch.nn.Module) and not getattr(head, "_peft_apps_packed", False):
        head.register_forward_pre_hook(lambda _m, args: (packed(args[0]), *args[1:]) if args else None)
        head._peft_apps_packed = True
    n = 0
    for module in model.modules():
        if (type(module) is torch.nn.Linear and module.weight.device.type == "cpu"
                and module.weight.dtype in (torch.bfloat16, torch.float16)):
            module.forward = types.MethodType(_bucketed, module)
            n += 1
    return n
