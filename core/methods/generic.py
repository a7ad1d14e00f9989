"""The other methods' builders: this project's tuners (`core/tuners`), full fine-tuning, and peft's methods
that take their own defaults (one generic builder, with what each works with as found by running it)."""

from __future__ import annotations

import dataclasses
from typing import Any

from .builders import _LLAMA_LIKE, _targets, default_targets
from .registry import METHODS, PEFT_TYPES, Builder, Method, PeftSection, _config_cls, register_method


_INPUT_EMBEDDINGS = ("embed_tokens", "wte", "embed_in", "word_embeddings")


def _tuner(name: str, config: str, summary: str, **facts: Any) -> None:
    """One of this project's tuners (`core/tuners`)."""

    def build(cfg: PeftSection, model_type: str, total_steps: int):
        cls = _config_cls(config)
        fields = {f.name for f in dataclasses.fields(cls)}
        keep = list(cfg.modules_to_save)
        if name == "dept" and set(keep) & set(_INPUT_EMBEDDINGS):
            from peft_apps.core.errors import warn

            warn("peft.method=dept updates the input embeddings itself: "
                 f"{', '.join(sorted(set(keep) & set(_INPUT_EMBEDDINGS)))} left out of peft.modules_to_save")
            keep = [m for m in keep if m not in _INPUT_EMBEDDINGS]
        kw: dict[str, Any] = dict(task_type="CAUSAL_LM", modules_to_save=keep or None)
        if name == "ssf":
            kw["target_modules"] = _targets(cfg, model_type)
        elif cfg.target_modules != "auto" and "target_modules" in fields:
            kw["target_modules"] = cfg.target_modules
        if name == "dept":
            kw.update(num_virtual_tokens=cfg.num_virtual_tokens, r=cfg.r)
        return cls(**{**kw, **cfg.options})

    register_method(Method(name, build, config, source="peft-apps", summary=summary, **facts))


_tuner("ssf", "peft_apps.core.tuners:SSFConfig", "scaling and shifting features: a learned scale and shift on "
       "each target layer's output (Lian et al., 2022); merges where the layer has a bias, or with shift=false")


_tuner("layerwise", "peft_apps.core.tuners:LayerwiseConfig", "layer-wise partial fine-tuning: the top "
       "options.num_layers (2) decoder layers train in full, the rest stay frozen (Shi et al., 2023)")


_tuner("dept", "peft_apps.core.tuners:DePTConfig", "decomposed prompt tuning: a short soft prompt plus a "
       "low-rank position-wise update of the input embeddings (Shi & Lipani, 2024)", merges=False,
       prompt=True, shared_prefix=False)


@register_method("full", None, source="peft-apps", four_bit=False, summary="full fine-tuning: every weight "
                 "trains; the run folder holds the whole model")
def _full(cfg: PeftSection, model_type: str, total_steps: int):
    """Full fine-tuning: every weight trains and the run folder holds the whole model (safetensors), not
    an adapter. No peft config; `attach_peft` makes all parameters trainable. For small models: it needs
    the weights, their gradients and the optimizer's two moments in memory (about 16 bytes a parameter
    in fp32), and refuses a quantized base."""
    return None


_OWN_TARGETS = ("shadow",)  # methods whose config chooses its own modules when given none


def _generic(name: str) -> Builder:
    """Any other peft method: its own defaults (its own targets for the architecture, else all linear
    layers), the recipe's modules_to_save, r (when the recipe sets it) and num_virtual_tokens where its
    config has them, then `peft.options`."""

    def build(cfg: PeftSection, model_type: str, total_steps: int):
        cls = _config_cls(f"peft.mapping:{name}")
        fields = {f.name for f in dataclasses.fields(cls)}
        kw: dict[str, Any] = {"task_type": "CAUSAL_LM"}
        if "target_modules" in fields:
            from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

            own = getattr(PEFT_TYPE_TO_TUNER_MAPPING[name.upper()], "target_module_mapping", None) or {}
            if cfg.target_modules != "auto":
                kw["target_modules"] = cfg.target_modules
            elif model_type not in own and name not in _OWN_TARGETS:  # no default for it here: all linear layers
                kw["target_modules"] = default_targets(model_type)
        if "modules_to_save" in fields and cfg.modules_to_save:
            kw["modules_to_save"] = cfg.modules_to_save
        if "num_virtual_tokens" in fields:
            kw["num_virtual_tokens"] = cfg.num_virtual_tokens
        if "r" in fields and "r" in cfg.model_fields_set:
            kw["r"] = cfg.r
        return cls(**{**kw, **cfg.options})

    return build


@register_method("trainable_tokens", "peft:TrainableTokensConfig", four_bit=False, required=("token_indices",),
                 required_hint="the ids of the tokens whose embeddings train, e.g. peft.options='{token_indices: "
                               "[128000, 128001]}' (new special tokens)",
                 summary="trains the embeddings of chosen tokens only (options.token_indices)")
def _trainable_tokens(cfg: PeftSection, model_type: str, total_steps: int):
    from peft import TrainableTokensConfig

    kw = dict(task_type="CAUSAL_LM", target_modules=["embed_tokens"] if model_type in _LLAMA_LIKE else None)
    return TrainableTokensConfig(**{**{k: v for k, v in kw.items() if v is not None}, **cfg.options})


@register_method("xlora", "peft:XLoraConfig", four_bit=False, merges=False, shared_prefix=False,
                 broken="peft 0.21's X-LoRA fails in its own forward hook (KeyError on the first adapter's name in "
                        "disable_adapter_layers)", required=("adapters",),
                 required_hint="the trained LoRA adapters it mixes, e.g. peft.options='{adapters: {code: runs/a, "
                               "docs: runs/b}}'",
                 summary="X-LoRA: a learned classifier mixes trained LoRA adapters per token (options.adapters: "
                         "{name: run folder})")
def _xlora(cfg: PeftSection, model_type: str, total_steps: int):
    from peft import XLoraConfig

    # hidden_size: None is filled in from the model by `attach_peft`
    return XLoraConfig(**{"task_type": "CAUSAL_LM", "hidden_size": None, **cfg.options})


@register_method("cpt", "peft:CPTConfig", merges=False, prompt=True, shared_prefix=False, required=("cpt_token_ids",),
                 required_hint="the tokenized few-shot context (and cpt_tokens_type_mask: 1 input template, 2 input, "
                               "3 output template, 4 output)",
                 summary="context-aware prompt tuning: the prompt is a few-shot context (options.cpt_token_ids, "
                         "cpt_tokens_type_mask) refined under a projection bound (Blau et al., 2024)")
def _cpt(cfg: PeftSection, model_type: str, total_steps: int):
    from peft import CPTConfig

    return CPTConfig(**{"task_type": "CAUSAL_LM", **cfg.options})


# What the other peft methods work with, found by running each (tests/test_methods.py checks every entry):
# (trains on a 4-bit base, merges)
_GENERIC_FACTS: dict[str, tuple[bool, bool]] = {
    "adamss": (False, True), "beft": (True, False), "c3a": (True, True), "cartridge": (True, False),
    "deft": (False, True), "delora": (False, True), "frod": (False, True),
    "glora": (False, True), "gralora": (True, True), "hira": (True, True), "lily": (True, False),
    "miss": (True, True), "multitask_prompt_tuning": (True, False), "osf": (False, True), "p_tuning": (True, False),
    "peanut": (False, True), "psoft": (False, True), "pvera": (True, True), "road": (True, True),
    "shadow": (True, False), "shira": (True, True), "supertuning": (False, True), "tinylora": (False, True),
    "unilora": (False, True), "vblora": (True, True), "waveft": (True, True),
}


_PROMPT_TYPES = ("p_tuning", "multitask_prompt_tuning", "cartridge")


# per-call inputs or state the shared-prefix path does not carry: served by plain generation instead
_NO_SHARED_PREFIX = ("shadow",)
_SUMMARIES = {
    "multitask_prompt_tuning": "prompt tuning with a shared prompt and per-task low-rank updates (Wang et al., "
                               "2023); one task (task id 0)",
    "p_tuning": "virtual tokens from a small prompt encoder (Liu et al., 2021)",
    "cartridge": "a trained KV-cache prefix distilled from a corpus (Eyuboglu et al., 2025)",
    "adamss": "AdaMSS: adaptive multi-subspaces (needs scikit-learn: pip install -e \".[methods]\")",
    "c3a": "circular convolution adaptation; options.block_size must divide the layer sizes",
    "delora": "decoupled low-rank adaptation: normalised LoRA with a bounded update",
    "glora": "generalised LoRA: learned scale, shift and low-rank terms on weights and bias",
    "gralora": "granular LoRA: the weight split into blocks, each with its own low-rank update",
    "hira": "high-rank adaptation through a Hadamard product with the frozen weight",
    "lily": "low-rank interconnected adaptation across layers",
    "miss": "matrix shard sharing",
    "osf": "orthogonal subspace fine-tuning (continual learning)",
    "psoft": "orthogonal fine-tuning in the weight's principal subspace",
    "pvera": "a VeRA variant: shared random projections with learned scaling vectors",
    "road": "2D rotary adaptation (RoAd); options.group_size must divide the layer sizes",
    "shadow": "ShadowPEFT: a small shadow network beside the frozen layers",
    "shira": "sparse high-rank adapters",
    "vblora": "vector-bank LoRA: low-rank factors composed from a shared bank of vectors",
    "waveft": "wavelet fine-tuning: sparse learned wavelet coefficients of the update",
    "beft": "peft's BEFT (merges only into layers with a bias)",
}


for _name in PEFT_TYPES:
    if _name not in METHODS:
        _four_bit, _merges = _GENERIC_FACTS[_name]
        _prompt = _name in _PROMPT_TYPES
        register_method(Method(_name, _generic(_name), f"peft.mapping:{_name}", four_bit=_four_bit,
                               merges=_merges, prompt=_prompt,
                               shared_prefix=not _prompt and _name not in _NO_SHARED_PREFIX,
                               summary=_SUMMARIES.get(_name, f"peft's {_name} (its own defaults)")))
