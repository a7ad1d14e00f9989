"""The training loss on completion tokens only, projecting just those positions onto the vocabulary.

Its own module, below both the trainer (which plans with it) and the trl subclass (which calls it), so
neither imports the other for it.
"""

from __future__ import annotations

import torch


def _causal_lm(model):
    """The causal LM inside a (peft) model when its head is a plain linear projection, else None."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        if model.peft_config[model.active_adapter].is_prompt_learning:
            return None
        model = model.get_base_model()
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None) \
            or getattr(cfg, "is_encoder_decoder", False):
        return None
    if not hasattr(model, "get_decoder") or model.get_output_embeddings() is None:
        return None
    return model


def completion_only_loss(lm, inputs: dict, num_items_in_batch=None, kernel: str = "torch"):
    """Causal-LM loss computing `lm_head` logits only where labels are not -100 (shifted by one).

    `kernel="liger"`: liger-kernel's fused linear + cross-entropy computes the same loss in chunks, never
    holding the completion positions' logits (vocabulary x positions) at once (CUDA only)."""
    labels = inputs["labels"]
    fwd = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
    hidden = lm.get_decoder()(**fwd, use_cache=False).last_hidden_state
    shift = labels[:, 1:]
    sel = shift != -100
    head = lm.get_output_embeddings()
    picked = hidden[:, :-1][sel]
    weight = getattr(head, "weight", None)
    if weight is not None and weight.dtype != picked.dtype and not torch.is_autocast_enabled(picked.device.type):
        picked = picked.to(weight.dtype)  # e.g. a trained fp32 lm_head over a bf16 / 4-bit body
    plain_head = isinstance(head, torch.nn.Linear) or type(head).__name__ == "ModulesToSaveWrapper"
    if kernel == "liger" and weight is not None and plain_head:  # a LoRA-adapted head keeps the unfused path
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        loss = liger_fused_linear_cross_entropy(picked, weight.to(picked.dtype), shift[sel],
                                                bias=getattr(head, "bias", None), reduction="sum")
    else:
        logits = head(picked).float()
        loss = torch.nn.functional.cross_entropy(logits, shift[sel], reduction="sum")
    denom = num_items_in_batch if num_items_in_batch is not None else sel.sum()
    return loss / torch.as_tensor(denom, device=loss.device).clamp(min=1)
