"""Merge an adapter into a standalone model.

For an adapter trained on a 4-bit (or 8-bit) base, the LoRA update was learnt against the
*quantized* weights, so it is merged into those weights dequantized to the compute dtype: merging
into the original full-precision checkpoint, or into the 4-bit layers themselves (which re-quantizes
the sum), would change the outputs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from peft_apps.core.config import ModelConfig
from peft_apps.core.errors import UserError


def dequantize_model(model, dtype: torch.dtype):
    """Replace every bitsandbytes Linear4bit/Linear8bitLt with an nn.Linear holding its dequantized weight."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, bnb.nn.Linear4bit):
                w = dequantize_4bit(child.weight.data, child.weight.quant_state).to(dtype)
            elif isinstance(child, bnb.nn.Linear8bitLt):
                cb, scb = child.weight.data, child.weight.SCB
                w = (cb.float() * scb.float().unsqueeze(1) / 127.0).to(dtype)
            else:
                continue
            new = torch.nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                  dtype=dtype, device=w.device)
            new.weight.data.copy_(w)
            if child.bias is not None:
                new.bias.data.copy_(child.bias.data.to(dtype))
            setattr(module, child_name, new)
    for attr in ("is_loaded_in_4bit", "is_loaded_in_8bit", "is_quantized"):
        if hasattr(model, attr):
            setattr(model, attr, False)
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    return model


def merge_adapter(adapter: str | Path, out: str | Path, base: str | None = None) -> Path:
    from peft import PeftModel

    from peft_apps.core.engine import adapter_base_config
    from peft_apps.core.modeling import compute_dtype, load_base_model, load_tokenizer

    from peft_apps.core.engine.loading import is_full_model

    adapter, out = Path(adapter), Path(out)
    if is_full_model(adapter):
        raise UserError(f"{adapter} is a fully fine-tuned model (peft.method=full): there is no adapter to merge",
                        hint="load the folder itself as the model (AutoModelForCausalLM.from_pretrained)")
    mcfg = adapter_base_config(adapter)
    if base:
        mcfg = mcfg.model_copy(update={"base": base})
    dtype = compute_dtype(mcfg)
    if torch.cuda.is_available() is False and dtype in (torch.float16,):
        dtype = torch.float32
    model = load_base_model(mcfg, quantize=True)
    from peft_apps.core.modeling import is_quantized

    if is_quantized(model):
        model = dequantize_model(model, dtype)
    peft_model = PeftModel.from_pretrained(model, str(adapter))
    try:
        merged = peft_model.merge_and_unload()
    except (ValueError, NotImplementedError) as e:
        raise UserError(f"cannot merge this adapter ({peft_model.peft_config['default'].peft_type}): {e}") from None
    merged.config.use_cache = True
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out), safe_serialization=True)
    tok_src = str(adapter) if (adapter / "tokenizer_config.json").is_file() else None
    load_tokenizer(ModelConfig(**{**mcfg.model_dump(), "quantization": "none"}), tok_src).save_pretrained(str(out))
    return out
