"""PEFT methods by name, built as peft configs from one recipe section.

Each entry is a builder `(PeftConfig section, model_type, total_steps) -> peft.PeftConfig`, registered
with `register_method` (like peft's own `register_peft_method`). `qlora` is LoRA whose recipe loads
the base in 4-bit; the quantization itself is the model section's business.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    from peft_apps.core.config import PeftConfig

Builder = Callable[["PeftConfig", str, int], Any]
METHODS: dict[str, Builder] = {}

_LLAMA_LIKE = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe", "gemma", "gemma2", "gemma3_text",
               "olmo", "olmo2", "granite", "smollm3", "deepseek_v3", "cohere", "starcoder2")
ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]
# Defaults per architecture: (all linear layers for LoRA-style methods, (IA)^3 targets, (IA)^3 feed-forward)
DEFAULT_TARGETS: dict[str, tuple[list[str], list[str], list[str]]] = {
    **{m: (ATTN + MLP, ["k_proj", "v_proj", "down_proj"], ["down_proj"]) for m in _LLAMA_LIKE},
    "phi": (["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"], ["k_proj", "v_proj", "fc2"], ["fc2"]),
    "phi3": (["qkv_proj", "o_proj", "gate_up_proj", "down_proj"], ["qkv_proj", "down_proj"], ["down_proj"]),
    "gpt2": (["c_attn", "c_proj", "c_fc"], ["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
    "gpt_neox": (["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
                 ["query_key_value", "dense_4h_to_h"], ["dense_4h_to_h"]),
    "codegen": (["qkv_proj", "out_proj", "fc_in", "fc_out"], ["qkv_proj", "fc_out"], ["fc_out"]),
}


def register_method(name: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        METHODS[name] = fn
        return fn

    return deco


def default_targets(model_type: str) -> list[str] | str:
    entry = DEFAULT_TARGETS.get(model_type)
    return list(entry[0]) if entry else "all-linear"


def _targets(cfg: PeftConfig, model_type: str) -> list[str] | str:
    return default_targets(model_type) if cfg.target_modules == "auto" else cfg.target_modules


def _lora_kwargs(cfg: PeftConfig, model_type: str) -> dict[str, Any]:
    return dict(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=_targets(cfg, model_type),
        modules_to_save=cfg.modules_to_save or None, task_type="CAUSAL_LM", bias="none",
    )


@register_method("lora")
def _lora(cfg: PeftConfig, model_type: str, total_steps: int):
    from peft import LoraConfig

    return LoraConfig(**{**_lora_kwargs(cfg, model_type), **cfg.options})


METHODS["qlora"] = _lora


@register_method("dora")
def _dora(cfg: PeftConfig, model_type: str, total_steps: int):
    from peft import LoraConfig

    return LoraConfig(**{**_lora_kwargs(cfg, model_type), "use_dora": True, **cfg.options})


@register_method("adalora")
def _adalora(cfg: PeftConfig, model_type: str, total_steps: int):
    """AdaLoRA: the rank budget falls from init_r to target_r between tinit and total_step - tfinal.

    The trainer calls `update_and_allocate(step)` after each optimizer step (see trainer.AdaLoraCallback).
    """
    from peft import AdaLoraConfig

    total = max(int(total_steps), 4)
    kw = _lora_kwargs(cfg, model_type)
    kw.pop("r")
    defaults = dict(init_r=cfg.init_r, target_r=cfg.target_r, total_step=total,
                    tinit=max(1, total // 10), tfinal=max(1, total // 5), deltaT=max(1, total // 20))
    return AdaLoraConfig(**{**kw, **defaults, **cfg.options})


@register_method("ia3")
def _ia3(cfg: PeftConfig, model_type: str, total_steps: int):
    from peft import IA3Config

    entry = DEFAULT_TARGETS.get(model_type)
    if cfg.target_modules == "auto":
        if entry is None:
            targets, ff = "all-linear", None
        else:
            targets, ff = entry[1], entry[2]
    else:
        targets, ff = cfg.target_modules, cfg.options.get("feedforward_modules", [])
    kw = dict(target_modules=targets, feedforward_modules=ff, modules_to_save=cfg.modules_to_save or None,
              task_type="CAUSAL_LM")
    return IA3Config(**{**kw, **{k: v for k, v in cfg.options.items() if k != "feedforward_modules"}})


@register_method("prompt_tuning")
def _prompt_tuning(cfg: PeftConfig, model_type: str, total_steps: int):
    from peft import PromptTuningConfig, PromptTuningInit

    kw: dict[str, Any] = dict(task_type="CAUSAL_LM", num_virtual_tokens=cfg.num_virtual_tokens)
    if cfg.prompt_init_text:
        kw.update(prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=cfg.prompt_init_text)
    return PromptTuningConfig(**{**kw, **cfg.options})


@register_method("prefix_tuning")
def _prefix_tuning(cfg: PeftConfig, model_type: str, total_steps: int):
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(**{"task_type": "CAUSAL_LM", "num_virtual_tokens": cfg.num_virtual_tokens,
                                 **cfg.options})


@register_method("llama_adapter")
def _llama_adapter(cfg: PeftConfig, model_type: str, total_steps: int):
    """LLaMA-Adapter (zero-init attention): `num_virtual_tokens` learned prompt tokens that the top
    `options.adapter_layers` layers (default: all) attend to through a zero-initialised gate, so training
    starts from the frozen model's own outputs. LLaMA-Reviewer's "prefix-tuning" setting. Llama-family
    attention only (peft's `AdaptionPromptConfig`)."""
    from peft import AdaptionPromptConfig

    if cfg.modules_to_save:
        from peft_apps.core.errors import warn

        warn(f"peft.modules_to_save ({', '.join(cfg.modules_to_save)}) is not supported by llama_adapter: ignored")
    # adapter_layers: None = every layer; `attach_peft` fills it in from the model
    return AdaptionPromptConfig(**{"task_type": "CAUSAL_LM", "adapter_len": cfg.num_virtual_tokens,
                                   "adapter_layers": None, **cfg.options})


@register_method("loha")
def _loha(cfg: PeftConfig, model_type: str, total_steps: int):
    from peft import LoHaConfig

    kw = dict(r=cfg.r, alpha=cfg.alpha, rank_dropout=cfg.dropout, target_modules=_targets(cfg, model_type),
              modules_to_save=cfg.modules_to_save or None, task_type="CAUSAL_LM")
    return LoHaConfig(**{**kw, **cfg.options})


@register_method("lokr")
def _lokr(cfg: PeftConfig, model_type: str, total_steps: int):
    from peft import LoKrConfig

    kw = dict(r=cfg.r, alpha=cfg.alpha, rank_dropout=cfg.dropout, target_modules=_targets(cfg, model_type),
              modules_to_save=cfg.modules_to_save or None, task_type="CAUSAL_LM")
    return LoKrConfig(**{**kw, **cfg.options})


@register_method("vera")
def _vera(cfg: PeftConfig, model_type: str, total_steps: int):
    """VeRA shares one pair of random projections, so all targets need one shape: attention q/v by default."""
    from peft import VeraConfig

    targets = ["q_proj", "v_proj"] if cfg.target_modules == "auto" and model_type in _LLAMA_LIKE else _targets(
        cfg, model_type)
    kw = dict(r=cfg.r, vera_dropout=cfg.dropout, target_modules=targets,
              modules_to_save=cfg.modules_to_save or None, task_type="CAUSAL_LM")
    return VeraConfig(**{**kw, **cfg.options})


@register_method("full")
def _full(cfg: PeftConfig, model_type: str, total_steps: int):
    """Full fine-tuning: every weight trains and the run folder holds the whole model (safetensors), not
    an adapter. No peft config; `attach_peft` makes all parameters trainable. For small models: it needs
    the weights, their gradients and the optimizer's two moments in memory (about 16 bytes a parameter
    in fp32), and refuses a quantized base."""
    return None


def build_peft_config(cfg: PeftConfig, model_type: str, total_steps: int = 1000):
    from peft_apps.core.errors import UserError

    try:
        return METHODS[cfg.method](cfg, model_type, total_steps)
    except TypeError as e:  # an unknown key in peft.options
        raise UserError(f"peft.options not accepted by {cfg.method}: {e}") from None
