"""GPU memory a training run will need, estimated before the model loads, and the check against free memory.

A CUDA out-of-memory error halfway through loading or at the first long batch says nothing about which
setting to change. The estimate counts, from the model's config alone (an empty model on the meta device):

  weights       quantized linear layers at 4.13 bits (NF4 + double-quantized block scales) or 8 bits, the
                rest (embeddings, norms, the output head) in the compute dtype
  adapter       trainable parameters in fp32 with their gradients and AdamW's two moments (16 bytes each)
  activations   with gradient checkpointing: each layer's bf16 input kept, plus one layer recomputed in full
                (34 bytes per token and hidden unit, Korthikanti et al. 2022, without the attention-score
                term that SDPA/flash kernels never store); without it, every layer's
  logits        the completion positions of the longest batch, bf16 logits + fp32 log-softmax and grad
  overhead      CUDA context and allocator slack (1 GiB flat)

It is an estimate for a refusal with a useful message, not a promise: `train.memory_check=false` skips it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GIB = 2 ** 30


@dataclass
class MemoryEstimate:
    weights: float
    adapter: float
    activations: float
    logits: float
    overhead: float = 1.0 * GIB

    @property
    def total(self) -> float:
        return self.weights + self.adapter + self.activations + self.logits + self.overhead

    def parts(self) -> dict[str, float]:
        """Each part in GiB, rounded, with the total."""
        names = ("weights", "adapter", "activations", "logits", "overhead")
        return {**{n: round(getattr(self, n) / GIB, 2) for n in names}, "total": round(self.total / GIB, 2)}


def _linear_shapes(config, trust_remote_code: bool = False) -> tuple[list[tuple[str, int]], int, Any]:
    """(name, numel) of each linear weight, the total parameter count and the output head, from an empty
    model on the meta device (no memory, no download beyond the config)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    head = model.get_output_embeddings()
    linears = []
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if w is not None and w.dim() == 2 and mod is not head and type(mod).__name__ in ("Linear", "Conv1D"):
            linears.append((name, w.numel()))
    total = sum(p.numel() for p in model.parameters())
    return linears, total, head


def estimate_training_memory(config, recipe, batch_tokens: int, completion_tokens: int,
                             weight_bytes: int = 2) -> MemoryEstimate:
    """Estimate for training `recipe` on a model with transformers `config`. `batch_tokens`: tokens in the
    largest batch (batch size x longest record); `completion_tokens`: completion positions in it;
    `weight_bytes`: bytes per unquantized weight (the runtime's dtype)."""
    from peft_apps.core.methods import default_targets

    linears, total, head = _linear_shapes(config, recipe.model.trust_remote_code)
    q = recipe.model.quantization
    bits = {"nf4": 4.13, "int8": 8.0}.get(q)
    lin = sum(n for _, n in linears)
    weights = lin * bits / 8 + (total - lin) * weight_bytes if bits else total * weight_bytes
    targets = recipe.peft.target_modules
    if targets == "auto":
        targets = default_targets(getattr(config, "model_type", ""))
    r = recipe.peft.r
    trainable = 0
    for name, numel in linears:
        if targets == "all-linear" or any(name.endswith(t) or name.split(".")[-1] == t for t in targets):
            # a square-ish guess of (in + out) from numel keeps this free of per-architecture shapes
            side = numel ** 0.5
            trainable += r * 2 * side
    method = recipe.peft.method
    if method == "full":
        trainable = total
    elif method == "layerwise":  # every weight of the top num_layers decoder layers
        import re

        n_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)
        top = int(recipe.peft.options.get("num_layers", 2))
        trainable = 0
        for name, numel in linears:
            found = re.search(r"\.(\d+)\.", name)
            if found and int(found.group(1)) >= n_layers - top:
                trainable += numel
    for m in recipe.peft.modules_to_save:
        if m in ("lm_head", "embed_tokens") and head is not None:
            trainable += head.weight.numel()
    adapter = trainable * 16
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)
    vocab = getattr(config, "vocab_size", 0)
    per_layer_full = 34 * batch_tokens * hidden
    if recipe.train.gradient_checkpointing:
        activations = layers * 2 * batch_tokens * hidden + per_layer_full
    else:
        activations = layers * per_layer_full
    logits = completion_tokens * vocab * (2 + 4 + 4)
    return MemoryEstimate(weights, adapter, activations, logits)


def lower_memory_hints(recipe) -> list[str]:
    """The recipe settings that would lower the estimate, as key=value overrides to try."""
    hints = []
    if recipe.model.quantization != "nf4":
        hints.append("model.quantization=nf4")
    if not recipe.train.gradient_checkpointing:
        hints.append("train.gradient_checkpointing=true")
    if recipe.train.batch_size > 1:
        hints.append(f"train.batch_size={max(1, recipe.train.batch_size // 2)} "
                     f"train.grad_accum={recipe.train.grad_accum * 2}")
    if recipe.data.max_length > 512:
        hints.append(f"data.max_length={recipe.data.max_length // 2}")
    if recipe.peft.modules_to_save:
        hints.append("peft.modules_to_save=[]")
    return hints


def check_fits(estimate: MemoryEstimate, free_bytes: float, recipe, device_name: str = "the GPU") -> None:
    """UserError when the estimate exceeds free memory, naming the parts and the settings that lower it."""
    from peft_apps.core.errors import UserError

    if estimate.total <= free_bytes:
        return
    parts = ", ".join(f"{k} {v:.1f}" for k, v in estimate.parts().items() if k != "total")
    raise UserError(
        f"this run needs about {estimate.total / GIB:.1f} GiB of GPU memory ({parts} GiB) but {device_name} has "
        f"{free_bytes / GIB:.1f} GiB free",
        hint="lower it with " + "; ".join(lower_memory_hints(recipe) or ["a smaller model.base"])
        + " (or train.memory_check=false to try anyway)")
