"""Loading the base model and attaching the adapter for training (trainable parameters in fp32).
"""

from __future__ import annotations


import torch

from peft_apps.core.config import Recipe
from peft_apps.core.errors import UserError
from peft_apps.core.methods import METHODS
from peft_apps.core.training.plan import _Plan, _check_gpu_memory, choose_batching


def _trainable_in_fp32(model) -> None:
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()


def _load_model(recipe: Recipe, plan: _Plan, train_cols: dict[str, list]):
    """The base model with its adapter attached, trainable parameters in fp32; the plan gains batching and
    whether the base is quantized."""
    from transformers import set_seed

    from peft_apps.core.modeling import attach_peft, is_quantized, load_base_model

    tc = recipe.train
    set_seed(tc.seed)  # adapter initialisation is random too: same seed, same starting adapter
    if plan.runtime.device == "cuda" and tc.memory_check:
        _check_gpu_memory(recipe, train_cols, plan.config, plan.runtime.dtype.itemsize, plan.world.size)
    # With bf16 autocast the frozen base weights are kept in bf16 (no per-step fp32 -> bf16 casts, half
    # the memory); the trainable parameters stay fp32 for the optimizer (see `choose_runtime`).
    if recipe.peft.method == "prefix_tuning":
        # peft 0.21 hands its virtual key/values to transformers 5 as `past_key_values` without widening the
        # attention mask to them: the first forward pass fails deep in attention. Say so before any loading.
        raise UserError("peft.method=prefix_tuning does not train with this peft/transformers pair yet (the "
                        "attention mask is not widened to the virtual tokens)",
                        hint="use peft.method=llama_adapter (learned prompts read by every layer, zero-init gated), "
                             "prompt_tuning (virtual tokens in the input) or lora")
    model = load_base_model(recipe.model, runtime=plan.runtime, config=plan.config)
    model = attach_peft(model, recipe, plan.total_steps, tc.gradient_checkpointing,
                        calibration=lambda: _calibration_batches(train_cols, tc.batch_size, model.device))
    plan.batching = choose_batching(recipe, plan.runtime)
    if METHODS[recipe.peft.method].prompt and plan.batching == "packing":
        plan.batching = "group_by_length"  # virtual tokens are per sequence: packing would share them
    plan.quantized = is_quantized(model.get_base_model() if hasattr(model, "get_base_model") else model)
    _trainable_in_fp32(model)
    if plan.runtime.precision in ("bf16", "fp16") and not plan.quantized:
        # Under autocast the adapter matmuls run in half precision anyway; peft's cast of every adapter
        # input to the fp32 adapter dtype (a full copy of the activations per adapted layer, before its
        # dropout) only costs memory traffic.
        from peft.tuners.tuners_utils import BaseTunerLayer

        for m in model.modules():
            if isinstance(m, BaseTunerLayer) and hasattr(m, "cast_input_dtype_enabled"):
                m.cast_input_dtype_enabled = False
    return model, plan


def _calibration_batches(train_cols: dict[str, list], batch_size: int, device, count: int = 8) -> list[dict]:
    """Up to `count` padded batches of the training records, in order: what EVA and CorDA start from."""
    from peft_apps.core.engine.caches import left_pad

    ids = train_cols["input_ids"][: batch_size * count]
    batches = []
    for i in range(0, len(ids), batch_size):
        input_ids, mask = left_pad(ids[i:i + batch_size], 0, device)
        # positions from the mask: each record's tokens sit where they would alone
        batches.append({"input_ids": input_ids, "attention_mask": mask,
                        "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)})
    return batches
