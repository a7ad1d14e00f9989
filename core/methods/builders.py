"""The builders: each method's `(peft section, model_type, total_steps) -> peft config`, registered by name:
the default targets per architecture, LoRA and its named recipes, and peft's methods that need settings of
their own (AdaLoRA, (IA)^3, prompt and prefix tuning, LoHa/LoKr, VeRA, OFT/BOFT, ...). The rest are in
`generic.py`."""

from __future__ import annotations

from typing import Any

from .registry import METHODS, Method, PeftSection, _config_cls, register_method


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


def default_targets(model_type: str) -> list[str] | str:
    entry = DEFAULT_TARGETS.get(model_type)
    return list(entry[0]) if entry else "all-linear"


def _targets(cfg: PeftSection, model_type: str) -> list[str] | str:
    return default_targets(model_type) if cfg.target_modules == "auto" else cfg.target_modules


def _options(cfg: PeftSection, method: str) -> dict[str, Any]:
    """`peft.options` less the keys this project reads itself."""
    extra = METHODS[method].extra_options if method in METHODS else ()
    return {k: v for k, v in cfg.options.items() if k not in extra}


def _lora_kwargs(cfg: PeftSection, model_type: str) -> dict[str, Any]:
    return dict(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=_targets(cfg, model_type),
        modules_to_save=cfg.modules_to_save or None, task_type="CAUSAL_LM", bias="none",
    )


def _lora_variant(name: str, summary: str, four_bit: bool = True, extra_options: tuple[str, ...] = (),
                  needs_cuda: bool = False, **fixed: Any) -> None:
    """LoRA with some LoraConfig fields fixed (an initialisation, rsLoRA, DoRA): `peft.options` still wins."""

    def build(cfg: PeftSection, model_type: str, total_steps: int):
        from peft import LoraConfig

        return LoraConfig(**{**_lora_kwargs(cfg, model_type), **fixed, **_options(cfg, name)})

    register_method(Method(name, build, "peft:LoraConfig", four_bit=four_bit, extra_options=extra_options,
                           needs_cuda=needs_cuda, summary=summary))


_lora_variant("lora", "low-rank update of each target weight (Hu et al., 2021)")


_lora_variant("qlora", "LoRA on a 4-bit NF4 base (the recipe's model.quantization=nf4)")


_lora_variant("dora", "weight-decomposed LoRA: magnitude and direction (Liu et al., 2024)", use_dora=True)


_lora_variant("rslora", "LoRA scaled by alpha/sqrt(r), stable at high ranks (Kalajdzievski, 2023)",
              use_rslora=True)


_lora_variant("pissa", "LoRA started from the principal singular vectors; the residual stays frozen "
              "(Meng et al., 2024); saved as a plain LoRA on the original base", four_bit=False,
              init_lora_weights="pissa_niter_16")


_lora_variant("olora", "LoRA started from an orthonormal (QR) basis of the weight (Buyukakyuz, 2024); saved as "
              "a plain LoRA on the original base", init_lora_weights="olora")


_lora_variant("eva", "LoRA started from the SVD of the layer inputs on training batches, ranks redistributed by "
              "explained variance (Paischer et al., 2024)", init_lora_weights="eva")


_lora_variant("corda", "LoRA started from the covariance of the layer inputs on training batches, context-"
              "oriented decomposition (Yang et al., 2024); saved as a plain LoRA on the original base",
              four_bit=False, init_lora_weights="corda")


_lora_variant("loftq", "LoRA on a 4-bit base, started to cancel the quantization error (Li et al., 2023); "
              "needs model.quantization=nf4, the base's safetensors and a CUDA GPU", needs_cuda=True)


_lora_variant("lora_plus", "LoRA trained with LoRA+: B's learning rate is loraplus_lr_ratio (16) times A's "
              "(Hayou et al., 2024)", extra_options=("loraplus_lr_ratio", "loraplus_lr_embedding"))


@register_method("adalora", "peft:AdaLoraConfig", summary="LoRA whose rank budget falls from init_r to "
                 "target_r by importance (Zhang et al., 2023)")
def _adalora(cfg: PeftSection, model_type: str, total_steps: int):
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


@register_method("ia3", "peft:IA3Config", summary="learned rescaling of keys, values and feed-forward "
                 "activations (Liu et al., 2022)")
def _ia3(cfg: PeftSection, model_type: str, total_steps: int):
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


def _ignored_modules_to_save(cfg: PeftSection, method: str) -> None:
    if cfg.modules_to_save:
        from peft_apps.core.errors import warn

        warn(f"peft.modules_to_save ({', '.join(cfg.modules_to_save)}) is not used by {method}: only its virtual "
             "tokens train")


@register_method("prompt_tuning", "peft:PromptTuningConfig", prompt=True, merges=False, shared_prefix=False,
                 summary="learned virtual tokens before the input (Lester et al., 2021)")
def _prompt_tuning(cfg: PeftSection, model_type: str, total_steps: int):
    from peft import PromptTuningConfig, PromptTuningInit

    _ignored_modules_to_save(cfg, "prompt_tuning")
    kw: dict[str, Any] = dict(task_type="CAUSAL_LM", num_virtual_tokens=cfg.num_virtual_tokens)
    if cfg.prompt_init_text:
        kw.update(prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=cfg.prompt_init_text)
    return PromptTuningConfig(**{**kw, **cfg.options})


@register_method("prefix_tuning", "peft:PrefixTuningConfig", prompt=True, merges=False, shared_prefix=False,
                 summary="learned key/value prefixes in every layer (Li & Liang, 2021)")
def _prefix_tuning(cfg: PeftSection, model_type: str, total_steps: int):
    from peft import PrefixTuningConfig

    _ignored_modules_to_save(cfg, "prefix_tuning")
    return PrefixTuningConfig(**{"task_type": "CAUSAL_LM", "num_virtual_tokens": cfg.num_virtual_tokens,
                                 **cfg.options})


def _llama_adapter(cfg: PeftSection, model_type: str, total_steps: int):
    """LLaMA-Adapter (zero-init attention): `num_virtual_tokens` learned prompt tokens that the top
    `options.adapter_layers` layers (default: all) attend to through a zero-initialised gate, so training
    starts from the frozen model's own outputs. LLaMA-Reviewer's "prefix-tuning" setting. Llama-family
    attention only (peft's `AdaptionPromptConfig`)."""
    from peft import AdaptionPromptConfig

    _ignored_modules_to_save(cfg, "llama_adapter")
    # adapter_layers: None = every layer; `attach_peft` fills it in from the model
    return AdaptionPromptConfig(**{"task_type": "CAUSAL_LM", "adapter_len": cfg.num_virtual_tokens,
                                   "adapter_layers": None, **cfg.options})


for _name in ("llama_adapter", "adaption_prompt"):
    register_method(Method(_name, _llama_adapter, "peft:AdaptionPromptConfig", merges=False,
                           summary="LLaMA-Adapter: gated learned prompts read by the top layers (Zhang et al., "
                                   "2023)" + (" (peft's name for llama_adapter)" if _name != "llama_adapter" else "")))


def _lycoris(name: str, config: str, summary: str) -> None:
    def build(cfg: PeftSection, model_type: str, total_steps: int):
        kw = dict(r=cfg.r, alpha=cfg.alpha, rank_dropout=cfg.dropout, target_modules=_targets(cfg, model_type),
                  modules_to_save=cfg.modules_to_save or None, task_type="CAUSAL_LM")
        return _config_cls(config)(**{**kw, **cfg.options})

    register_method(Method(name, build, config, four_bit=False, summary=summary))


_lycoris("loha", "peft:LoHaConfig", "low-rank Hadamard product update (Hyeon-Woo et al., 2022)")


_lycoris("lokr", "peft:LoKrConfig", "low-rank Kronecker product update (Yeh et al., 2024)")


@register_method("vera", "peft:VeraConfig", summary="shared frozen random projections, learned scaling vectors "
                 "(Kopiczko et al., 2024)")
def _vera(cfg: PeftSection, model_type: str, total_steps: int):
    """VeRA shares one pair of random projections, so all targets need one shape: attention q/v by default."""
    from peft import VeraConfig

    targets = ["q_proj", "v_proj"] if cfg.target_modules == "auto" and model_type in _LLAMA_LIKE else _targets(
        cfg, model_type)
    kw = dict(r=cfg.r, vera_dropout=cfg.dropout, target_modules=targets,
              modules_to_save=cfg.modules_to_save or None, task_type="CAUSAL_LM")
    return VeraConfig(**{**kw, **cfg.options})


@register_method("randlora", "peft:RandLoraConfig", summary="full-rank update from shared random bases with "
                 "learned scales (Albert et al., 2025)")
def _randlora(cfg: PeftSection, model_type: str, total_steps: int):
    from peft import RandLoraConfig

    kw = dict(r=cfg.r, randlora_alpha=cfg.alpha, randlora_dropout=cfg.dropout, target_modules=_targets(cfg, model_type),
              modules_to_save=cfg.modules_to_save or None, task_type="CAUSAL_LM")
    return RandLoraConfig(**{**kw, **cfg.options})


def _orthogonal(name: str, config: str, summary: str, **defaults: Any) -> None:
    """OFT / BOFT: block-diagonal orthogonal rotations of the weights; the block size (not r) sets the size."""

    def build(cfg: PeftSection, model_type: str, total_steps: int):
        kw = dict(target_modules=_targets(cfg, model_type), modules_to_save=cfg.modules_to_save or None,
                  task_type="CAUSAL_LM", **defaults)
        opts = dict(cfg.options)
        if any(k.endswith("block_num") or k == "r" for k in opts):  # the size given another way
            kw = {k: v for k, v in kw.items() if not k.endswith("block_size")}
        return _config_cls(config)(**{**kw, **opts})

    register_method(Method(name, build, config, summary=summary))


_orthogonal("oft", "peft:OFTConfig", "orthogonal fine-tuning: block-diagonal rotations (Qiu et al., 2023)",
            oft_block_size=8, r=0)


_orthogonal("boft", "peft:BOFTConfig", "orthogonal butterfly: rotations from butterfly factors (Liu et al., 2024)",
            boft_block_size=4)


@register_method("hra", "peft:HRAConfig", four_bit=False, summary="Householder reflections adaptation "
                 "(Yuan et al., 2024)")
def _hra(cfg: PeftSection, model_type: str, total_steps: int):
    from peft import HRAConfig

    kw = dict(r=cfg.r, target_modules=_targets(cfg, model_type), modules_to_save=cfg.modules_to_save or None,
              task_type="CAUSAL_LM")
    return HRAConfig(**{**kw, **cfg.options})


@register_method("fourierft", "peft:FourierFTConfig", summary="learned spectral coefficients, "
                 "inverse DFT to a weight update (Gao et al., 2024)")
def _fourierft(cfg: PeftSection, model_type: str, total_steps: int):
    from peft import FourierFTConfig

    kw = dict(n_frequency=100, scaling=150.0, target_modules=_targets(cfg, model_type),
              modules_to_save=cfg.modules_to_save or None, task_type="CAUSAL_LM")
    return FourierFTConfig(**{**kw, **cfg.options})


@register_method("ln_tuning", "peft:LNTuningConfig", summary="trains the norm layers only (Zhao et al., 2024)")
def _ln_tuning(cfg: PeftSection, model_type: str, total_steps: int):
    from peft import LNTuningConfig

    kw: dict[str, Any] = dict(modules_to_save=cfg.modules_to_save or None, task_type="CAUSAL_LM")
    if cfg.target_modules != "auto":
        kw["target_modules"] = cfg.target_modules
    elif model_type in _LLAMA_LIKE:
        kw["target_modules"] = ["input_layernorm", "post_attention_layernorm", "norm"]
    return LNTuningConfig(**{**kw, **cfg.options})


@register_method("poly", "peft:PolyConfig", merges=False, shared_prefix=False, summary="Polytropon: a skill inventory of LoRAs "
                 "mixed per task (Ponti et al., 2023); one task (task id 0) unless options.n_tasks is set")
def _poly(cfg: PeftSection, model_type: str, total_steps: int):
    from peft import PolyConfig

    kw = dict(r=cfg.r, target_modules=_targets(cfg, model_type), modules_to_save=cfg.modules_to_save or None,
              task_type="CAUSAL_LM", n_tasks=1, n_skills=4, n_splits=1)
    return PolyConfig(**{**kw, **cfg.options})
