"""Helpers for autore tests: a LoRA adapter on the tiny base without training (non-zero weights)."""

from pathlib import Path


def random_adapter(out: Path, seed: int = 0) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from peft_apps.core.tiny import builtin_model_path

    base = builtin_model_path("tiny")
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                                      task_type="CAUSAL_LM"))
    model.save_pretrained(out)
    (out / "recipe.yaml").write_text("app: autore\nmodel:\n  base: builtin:tiny\n  quantization: none\n  dtype: float32\n")
    return out
