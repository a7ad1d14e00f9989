"""Load a base model and tokenizer (hub id, local directory, GGUF or builtin model; where each comes from is
`core/bases.py`) and attach PEFT.

With CUDA, `quantization: nf4` is QLoRA: 4-bit NF4 weights, double quantization, bf16 compute where the
GPU supports it, `prepare_model_for_kbit_training`. Without CUDA the same recipe runs on bitsandbytes'
CPU backend (fp32 compute); if bitsandbytes cannot be used, the model loads unquantized with one warning.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_apps.core.bases import _hub_call, resolve_base, resolve_model, with_base_sha
from peft_apps.core.config import ModelConfig
from peft_apps.core.errors import UserError


# resolve_base, resolve_model and with_base_sha live in core/bases.py; this is their old import path too
__all__ = ["Runtime", "attach_peft", "attn_implementation", "bnb_usable", "choose_runtime", "compute_dtype",
           "cpu_has_bf16", "default_task_ids", "has_cuda", "is_quantized", "load_base_model", "load_config",
           "load_tokenizer", "model_class_for", "native_bf16", "quantization_config", "resolve_base",
           "resolve_model", "with_base_sha"]

def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 matmuls run natively on this CPU (elsewhere they are emulated, slowly)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class Runtime:
    """Where and how a model runs. One decision, so the pieces cannot disagree: a 4-bit model's compute
    dtype, the frozen weights' dtype, the trainer's autocast precision and the attention kernel.

    bf16 only where the device runs it natively (CUDA with bf16 support, a CPU with AVX-512 BF16 / AMX);
    fp16 autocast on older GPUs; fp32 elsewhere. Trainable parameters always stay fp32 for the optimizer."""

    device: str  # "cuda" or "cpu"
    precision: str  # autocast precision while training: bf16 / fp16 / fp32
    dtype: Any  # torch dtype of unquantized frozen weights and of 4-bit compute
    attn_implementation: str  # eager / sdpa / flash_attention_2 / flex_attention


def native_bf16() -> bool:
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    return cpu_has_bf16()


def choose_runtime(cfg: ModelConfig, mixed_precision: str = "auto", *, training: bool = True,
                   model_class: Any = None) -> Runtime:
    """The runtime for model section `cfg` on this machine. `mixed_precision`: the recipe's
    `train.mixed_precision`; `model_class`: the architecture's class, whose support decides the attention
    kernel (None: not known, e.g. remote code). Inference on a CPU stays fp32 (no autocast there)."""
    import torch

    cuda = has_cuda()
    if mixed_precision != "auto":
        precision = mixed_precision
    elif cuda:
        precision = "bf16" if native_bf16() else "fp16"
    else:
        precision = "bf16" if training and native_bf16() else "fp32"
    if cfg.dtype != "auto":
        dtype = getattr(torch, cfg.dtype)
    elif precision == "bf16":
        dtype = torch.bfloat16
    else:
        dtype = torch.float16 if precision == "fp16" and cuda else torch.float32
    return Runtime("cuda" if cuda else "cpu", precision, dtype, attn_implementation(cfg, model_class))


def compute_dtype(cfg: ModelConfig):
    """The dtype a model loads in for inference and merging (see `choose_runtime`)."""
    return choose_runtime(cfg, training=False).dtype


def model_class_for(config) -> Any:
    """The causal-LM class transformers would build for `config`, or None (remote code, unknown)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        return None


def attn_implementation(cfg: ModelConfig, model_class: Any = None) -> str:
    """FlashAttention-2 on CUDA when installed, else SDPA, else eager: each only where the architecture
    supports it (Gemma-2 has no SDPA path, GPT-2 no flex attention). An explicit choice the architecture
    lacks is a UserError naming the ones it has."""
    supports = {
        "flash_attention_2": bool(getattr(model_class, "_supports_flash_attn", True)),
        "sdpa": bool(getattr(model_class, "_supports_sdpa", True)),
        "flex_attention": bool(getattr(model_class, "_supports_flex_attn", True)),
        "eager": True,
    }
    want = cfg.attn_implementation
    if want != "auto":
        if not supports.get(want, True):
            name = getattr(model_class, "__name__", "this model")
            raise UserError(f"{name} does not support model.attn_implementation={want}",
                            hint="choose one of: " + ", ".join(k for k, v in supports.items() if v) + " (or auto)")
        return want
    if has_cuda() and supports["flash_attention_2"] and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa" if supports["sdpa"] else "eager"


def bnb_usable() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return False
    return True


def quantization_config(cfg: ModelConfig, runtime: Runtime):
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
        bnb_4bit_compute_dtype=runtime.dtype,
        bnb_4bit_quant_storage=runtime.dtype if runtime.device == "cuda" else None,
    )


def load_tokenizer(cfg: ModelConfig, path: str | None = None):
    from transformers import AutoTokenizer

    base = path or resolve_model(cfg)
    tok = _hub_call(AutoTokenizer.from_pretrained, base, revision=cfg.revision,
                    trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_config(cfg: ModelConfig, path: str | None = None):
    """The model's transformers config (a local read, or the hub's config.json)."""
    from transformers import AutoConfig

    return _hub_call(AutoConfig.from_pretrained, path or resolve_model(cfg), revision=cfg.revision,
                     trust_remote_code=cfg.trust_remote_code)


def load_base_model(cfg: ModelConfig, *, quantize: bool = True, dtype=None, runtime: Runtime | None = None,
                    config=None):
    """The base model as the recipe describes it, on the runtime's device (default: the inference runtime,
    see `choose_runtime`); `quantize=False` loads it unquantized in `dtype` (merging). `config`: its
    transformers config when the caller has read it already."""
    from transformers import AutoModelForCausalLM

    base = resolve_model(cfg)
    config = config or load_config(cfg, base)
    runtime = runtime or choose_runtime(cfg, training=False, model_class=model_class_for(config))
    qcfg = quantization_config(cfg, runtime) if quantize else None
    kwargs: dict[str, Any] = dict(
        config=config,
        revision=cfg.revision,
        trust_remote_code=cfg.trust_remote_code,
        dtype=dtype or runtime.dtype,
        attn_implementation=runtime.attn_implementation,
    )
    if qcfg is not None:
        kwargs["quantization_config"] = qcfg
        kwargs["device_map"] = {"": 0} if runtime.device == "cuda" else "cpu"
    try:
        model = _hub_call(AutoModelForCausalLM.from_pretrained, base, **kwargs)
    except ValueError as e:  # remote code that has no SDPA path: its class was not known up front
        if runtime.attn_implementation != "sdpa" or cfg.attn_implementation != "auto" \
                or "does not support" not in str(e):
            raise
        runtime = Runtime(runtime.device, runtime.precision, runtime.dtype, "eager")
        model = _hub_call(AutoModelForCausalLM.from_pretrained, base, **{**kwargs, "attn_implementation": "eager"})
    if qcfg is None and runtime.device == "cuda":
        model = model.to("cuda")
    model.config.use_cache = False
    return model


def is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


# LoRA initialisations that change the base weights (the adapter starts from their principal part and the
# base keeps the residual): the run saves the trained adapter converted to a plain LoRA on the original base
RESIDUAL_INITS = ("pissa", "olora", "corda")


def attach_peft(model, recipe, total_steps: int, gradient_checkpointing: bool, calibration=None):
    """The model with the recipe's adapter attached. `calibration()` gives a few training batches
    (input_ids, attention_mask) for the methods that start from data: EVA and CorDA."""
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training

    import peft_apps.core.tuners  # noqa: F401  registers this project's tuners with peft
    from peft_apps.core.methods import build_peft_config

    method = recipe.peft.method
    if method == "full":  # (a quantized base is refused before loading: methods.check_recipe)
        for p in model.parameters():
            p.requires_grad_(True)
        if gradient_checkpointing:
            model.enable_input_require_grads()
        return model
    if is_quantized(model):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.enable_input_require_grads()
    peft_cfg = build_peft_config(recipe.peft, model.config.model_type, total_steps)
    if hasattr(peft_cfg, "adapter_layers") and peft_cfg.adapter_layers is None:  # llama_adapter: all layers
        peft_cfg.adapter_layers = model.config.num_hidden_layers
    if hasattr(peft_cfg, "hidden_size") and peft_cfg.hidden_size is None:  # xlora: the model's width
        peft_cfg.hidden_size = model.config.hidden_size
    batches = None
    if method in ("eva", "corda"):
        if calibration is None:
            raise UserError(f"peft.method={method} starts from training batches: train it with `peft-apps train`")
        batches = calibration()
    try:
        if method == "corda":
            from peft.tuners.lora.corda import preprocess_corda

            def run_model():  # CorDA's hooks take one sequence a call (batch of 1, no padding)
                for b in batches:
                    for ids, mask in zip(b["input_ids"], b["attention_mask"]):
                        model(input_ids=ids[mask.bool()].unsqueeze(0))

            with torch.no_grad():
                preprocess_corda(model, peft_cfg, run_model=run_model)
        peft_model = get_peft_model(model, peft_cfg)
    except ValueError as e:
        raise UserError(f"PEFT method {method!r} cannot be applied to this model "
                        f"({model.config.model_type}): {e}") from None
    if method == "eva":
        from peft import initialize_lora_eva_weights

        initialize_lora_eva_weights(peft_model, batches, show_progress_bar=False)
    elif method == "loftq":
        from peft import replace_lora_weights_loftq

        replace_lora_weights_loftq(peft_model, model_path=_safetensors_dir(model))
    if method in RESIDUAL_INITS:
        import atexit
        import shutil
        import tempfile

        initial = tempfile.mkdtemp(prefix="peft-apps-initial-")
        atexit.register(shutil.rmtree, initial, True)
        peft_model.save_pretrained(initial, safe_serialization=True)
        peft_model.peft_apps_initial = initial  # `save_adapter` converts against it
    default_task_ids(peft_model)
    return peft_model


def _safetensors_dir(model) -> str:
    """The local folder of the base's safetensors (LoftQ reads the unquantized weights from it)."""
    path = Path(str(getattr(model.config, "_name_or_path", "") or getattr(model, "name_or_path", "")))
    if path.is_dir() and any(path.glob("*.safetensors")):
        return str(path)
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(str(path), allow_patterns=["*.safetensors", "*.json"], local_files_only=True)
    except Exception:  # noqa: BLE001  not in the local cache
        raise UserError(f"peft.method=loftq reads the base's unquantized weights: no local safetensors for {path}",
                        hint="download the model first (huggingface-cli download), or use a local folder") from None


def default_task_ids(model) -> None:
    """Poly and multitask prompt tuning take `task_ids` on every call: default them to task 0 (one task)."""
    cfgs = getattr(model, "peft_config", None) or {}
    kinds = {str(getattr(getattr(c, "peft_type", None), "value", "")) for c in cfgs.values()}
    targets = ([model.base_model] if "POLY" in kinds else []) + ([model] if "MULTITASK_PROMPT_TUNING" in kinds else [])
    for target in targets:
        if getattr(target, "_peft_apps_task_ids", False):
            continue
        target.register_forward_pre_hook(lambda module, args, kwargs: (args, _with_task_ids(args, kwargs)),
                                         with_kwargs=True)
        generate = target.generate
        target.generate = lambda *args, _generate=generate, **kwargs: _generate(*args, **_with_task_ids(args, kwargs))
        target._peft_apps_task_ids = True


def _with_task_ids(args: tuple, kwargs: dict) -> dict:
    """`kwargs` with `task_ids` all 0 (one per row of the input) when the call gives none."""
    if kwargs.get("task_ids") is not None:
        return kwargs
    ref = next((x for x in (kwargs.get("input_ids"), kwargs.get("inputs_embeds"), *args[:1]) if x is not None), None)
    if ref is None:
        return kwargs
    import torch

    return {**kwargs, "task_ids": torch.zeros(ref.shape[0], dtype=torch.long, device=ref.device)}
