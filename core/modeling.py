"""Load a base model and tokenizer (hub id, local directory or builtin tiny model) and attach PEFT.

With CUDA, `quantization: nf4` is QLoRA: 4-bit NF4 weights, double quantization, bf16 compute where the
GPU supports it, `prepare_model_for_kbit_training`. Without CUDA the same recipe runs on bitsandbytes'
CPU backend (fp32 compute); if bitsandbytes cannot be used, the model loads unquantized with one warning.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any

from peft_apps.core.config import ModelConfig
from peft_apps.core.errors import UserError

def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_base(base: str) -> str:
    """A local path or hub id as given; `builtin:tiny` / `builtin:small` build the offline model once."""
    if base.startswith("builtin:"):
        from peft_apps.core.tiny import SIZES, builtin_model_path

        size = base.split(":", 1)[1]
        if size not in SIZES:
            raise UserError(f"unknown builtin model {base!r}; choose one of: "
                            + ", ".join(f"builtin:{s}" for s in SIZES))
        return str(builtin_model_path(size))
    path = Path(base).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"model directory {path} has no config.json",
                            hint="point model.base at a directory saved with save_pretrained, or a hub id")
        return str(path)
    return base


def _offline_hint(base: str) -> str:
    return (f"{base!r} is neither a local directory nor available offline. Download it on a machine with "
            f"access (`hf download {base} --local-dir DIR`) and set model.base=DIR, or use model.base=builtin:tiny "
            f"for a smoke run")


def _hub_call(fn, base: str, *args: Any, **kwargs: Any):
    try:
        return fn(base, *args, **kwargs)
    except (OSError, ValueError) as e:
        text = str(e)
        if Path(base).exists() or not any(k in text for k in (
                "offline", "connect", "resolve", "not a valid model identifier", "Connection", "couldn't",
                "Could not", "does not appear", "not found", "local_files_only", "Max retries")):
            raise
        raise UserError(f"cannot load model {base!r}: {text.splitlines()[0]}", hint=_offline_hint(base)) from None


def compute_dtype(cfg: ModelConfig):
    import torch

    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    if has_cuda():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def attn_implementation(cfg: ModelConfig) -> str:
    if cfg.attn_implementation != "auto":
        return cfg.attn_implementation
    if has_cuda() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def bnb_usable() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return False
    return True


def quantization_config(cfg: ModelConfig):
    if cfg.quantization == "none":
        return None
    if not bnb_usable():
        warnings.warn(f"bitsandbytes is not usable here: loading {cfg.base!r} unquantized "
                      f"(model.quantization={cfg.quantization} ignored; LoRA in full precision)", stacklevel=2)
        return None
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=cfg.double_quant,
        bnb_4bit_compute_dtype=compute_dtype(cfg),
        bnb_4bit_quant_storage=compute_dtype(cfg) if has_cuda() else None,
    )


def load_tokenizer(cfg: ModelConfig, path: str | None = None):
    from transformers import AutoTokenizer

    base = path or resolve_base(cfg.base)
    tok = _hub_call(AutoTokenizer.from_pretrained, base, revision=cfg.revision,
                    trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base_model(cfg: ModelConfig, *, quantize: bool = True, dtype=None):
    """The base model as the recipe describes it; `quantize=False` loads it in `dtype` (merging)."""
    from transformers import AutoModelForCausalLM

    base = resolve_base(cfg.base)
    qcfg = quantization_config(cfg) if quantize else None
    kwargs: dict[str, Any] = dict(
        revision=cfg.revision,
        trust_remote_code=cfg.trust_remote_code,
        dtype=dtype or compute_dtype(cfg),
        attn_implementation=attn_implementation(cfg),
    )
    if qcfg is not None:
        kwargs["quantization_config"] = qcfg
        kwargs["device_map"] = {"": 0} if has_cuda() else "cpu"
    model = _hub_call(AutoModelForCausalLM.from_pretrained, base, **kwargs)
    if qcfg is None and has_cuda():
        model = model.to("cuda")
    model.config.use_cache = False
    return model


def is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def attach_peft(model, recipe, total_steps: int, gradient_checkpointing: bool):
    from peft import get_peft_model, prepare_model_for_kbit_training

    from peft_apps.core.methods import build_peft_config

    if is_quantized(model):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.enable_input_require_grads()
    peft_cfg = build_peft_config(recipe.peft, model.config.model_type, total_steps)
    try:
        return get_peft_model(model, peft_cfg)
    except ValueError as e:
        raise UserError(f"PEFT method {recipe.peft.method!r} cannot be applied to this model "
                        f"({model.config.model_type}): {e}") from None
