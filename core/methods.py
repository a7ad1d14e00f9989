"""PEFT methods by name: every method peft implements, this project's own tuners (`core/tuners`), and named
recipes of LoRA (its initialisations, rsLoRA, LoRA+, QLoRA, DoRA) and full fine-tuning.

A method is a `Method`: a builder `(PeftConfig section, model_type, total_steps) -> peft config`, the config
class whose fields `peft.options` may set, and what it works with: 4-bit bases, merging, the shared-prefix
engine, packing. `check_recipe` refuses a combination that cannot work before anything loads; the facts
are checked against peft itself for every method by tests/test_methods.py (a real 4-bit base, a real merge).

Registering a method: `register_method(Method(...))`, or `@register_method("name", config="peft.XConfig")`
on a builder.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    from peft_apps.core.config import PeftConfig

Builder = Callable[["PeftConfig", str, int], Any]

# peft 0.21's methods (PeftType, lower case); tests/test_methods.py checks the list against peft itself
PEFT_TYPES = (
    "prompt_tuning", "multitask_prompt_tuning", "p_tuning", "prefix_tuning", "lora", "adalora", "adamss", "boft",
    "adaption_prompt", "ia3", "beft", "lily", "loha", "lokr", "oft", "poly", "ln_tuning", "vera", "frod", "pvera",
    "fourierft", "glora", "xlora", "hra", "vblora", "unilora", "cpt", "miss", "randlora", "road",
    "trainable_tokens", "hira", "shira", "c3a", "waveft", "osf", "delora", "gralora", "cartridge", "tinylora",
    "psoft", "peanut", "shadow", "supertuning", "deft",
)

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


@dataclasses.dataclass(frozen=True)
class Method:
    """A PEFT method the recipes name (`peft.method`)."""

    name: str
    build: Builder
    config: str | None  # "module:Class" of the config `peft.options` goes to (None: full fine-tuning)
    source: str = "peft"  # "peft", or "peft-apps" for this project's tuners and recipes
    four_bit: bool = True  # trains on a 4-bit / 8-bit (bitsandbytes) base
    merges: bool = True  # merge_and_unload gives a plain model
    prompt: bool = False  # adds virtual tokens to every sequence: no packing, no shared-prefix cache
    shared_prefix: bool = True  # served by the engine's shared-prefix decoding (and the server's batches)
    extra_options: tuple[str, ...] = ()  # `peft.options` keys this project reads (not the peft config's)
    summary: str = ""
    required: tuple[str, ...] = ()  # `peft.options` keys it cannot do without
    required_hint: str = ""  # what to set them to
    needs_cuda: bool = False  # runs only on a CUDA GPU
    broken: str | None = None  # why it does not run with the installed peft (refused with this reason)

    def config_class(self):
        return None if self.config is None else _config_cls(self.config)


METHODS: dict[str, Method] = {}


def register_method(name: str | Method, config: str | None = None, **facts: Any):
    """`register_method(Method(...))`, or as a decorator on a builder: `@register_method("x", "peft:XConfig")`."""
    if isinstance(name, Method):
        METHODS[name.name] = name
        return name

    def deco(fn: Builder) -> Builder:
        METHODS[name] = Method(name, fn, config, **facts)
        return fn

    return deco


def default_targets(model_type: str) -> list[str] | str:
    entry = DEFAULT_TARGETS.get(model_type)
    return list(entry[0]) if entry else "all-linear"


def _targets(cfg: PeftConfig, model_type: str) -> list[str] | str:
    return default_targets(model_type) if cfg.target_modules == "auto" else cfg.target_modules


def _options(cfg: PeftConfig, method: str) -> dict[str, Any]:
    """`peft.options` less the keys this project reads itself."""
    extra = METHODS[method].extra_options if method in METHODS else ()
    return {k: v for k, v in cfg.options.items() if k not in extra}


def _lora_kwargs(cfg: PeftConfig, model_type: str) -> dict[str, Any]:
    return dict(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=_targets(cfg, model_type),
        modules_to_save=cfg.modules_to_save or None, task_type="CAUSAL_LM", bias="none",
    )


def _lora_variant(name: str, summary: str, four_bit: bool = True, extra_options: tuple[str, ...] = (),
                  needs_cuda: bool = False, **fixed: Any) -> None:
    """LoRA with some LoraConfig fields fixed (an initialisation, rsLoRA, DoRA): `peft.options` still wins."""

    def build(cfg: PeftConfig, model_type: str, total_steps: int):
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


@register_method("ia3", "peft:IA3Config", summary="learned rescaling of keys, values and feed-forward "
                 "activations (Liu et al., 2022)")
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


def _ignored_modules_to_save(cfg: PeftConfig, method: str) -> None:
    if cfg.modules_to_save:
        from peft_apps.core.errors import warn

        warn(f"peft.modules_to_save ({', '.join(cfg.modules_to_save)}) is not used by {method}: only its virtual "
             "tokens train")


@register_method("prompt_tuning", "peft:PromptTuningConfig", prompt=True, merges=False, shared_prefix=False,
                 summary="learned virtual tokens before the input (Lester et al., 2021)")
def _prompt_tuning(cfg: PeftConfig, model_type: str, total_steps: int):
    from peft import PromptTuningConfig, PromptTuningInit

    _ignored_modules_to_save(cfg, "prompt_tuning")
    kw: dict[str, Any] = dict(task_type="CAUSAL_LM", num_virtual_tokens=cfg.num_virtual_tokens)
    if cfg.prompt_init_text:
        kw.update(prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=cfg.prompt_init_text)
    return PromptTuningConfig(**{**kw, **cfg.options})


@register_method("prefix_tuning", "peft:PrefixTuningConfig", prompt=True, merges=False, shared_prefix=False,
                 summary="learned key/value prefixes in every layer (Li & Liang, 2021)")
def _prefix_tuning(cfg: PeftConfig, model_type: str, total_steps: int):
    from peft import PrefixTuningConfig

    _ignored_modules_to_save(cfg, "prefix_tuning")
    return PrefixTuningConfig(**{"task_type": "CAUSAL_LM", "num_virtual_tokens": cfg.num_virtual_tokens,
                                 **cfg.options})


def _llama_adapter(cfg: PeftConfig, model_type: str, total_steps: int):
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
    def build(cfg: PeftConfig, model_type: str, total_steps: int):
        kw = dict(r=cfg.r, alpha=cfg.alpha, rank_dropout=cfg.dropout, target_modules=_targets(cfg, model_type),
                  modules_to_save=cfg.modules_to_save or None, task_type="CAUSAL_LM")
        return _config_cls(config)(**{**kw, **cfg.options})

    register_method(Method(name, build, config, four_bit=False, summary=summary))


_lycoris("loha", "peft:LoHaConfig", "low-rank Hadamard product update (Hyeon-Woo et al., 2022)")
_lycoris("lokr", "peft:LoKrConfig", "low-rank Kronecker product update (Yeh et al., 2024)")


@register_method("vera", "peft:VeraConfig", summary="shared frozen random projections, learned scaling vectors "
                 "(Kopiczko et al., 2024)")
def _vera(cfg: PeftConfig, model_type: str, total_steps: int):
    """VeRA shares one pair of random projections, so all targets need one shape: attention q/v by default."""
    from peft import VeraConfig

    targets = ["q_proj", "v_proj"] if cfg.target_modules == "auto" and model_type in _LLAMA_LIKE else _targets(
        cfg, model_type)
    kw = dict(r=cfg.r, vera_dropout=cfg.dropout, target_modules=targets,
              modules_to_save=cfg.modules_to_save or None, task_type="CAUSAL_LM")
    return VeraConfig(**{**kw, **cfg.options})


@register_method("randlora", "peft:RandLoraConfig", summary="full-rank update from shared random bases with "
                 "learned scales (Albert et al., 2025)")
def _randlora(cfg: PeftConfig, model_type: str, total_steps: int):
    from peft import RandLoraConfig

    kw = dict(r=cfg.r, randlora_alpha=cfg.alpha, randlora_dropout=cfg.dropout, target_modules=_targets(cfg, model_type),
              modules_to_save=cfg.modules_to_save or None, task_type="CAUSAL_LM")
    return RandLoraConfig(**{**kw, **cfg.options})


def _orthogonal(name: str, config: str, summary: str, **defaults: Any) -> None:
    """OFT / BOFT: block-diagonal orthogonal rotations of the weights; the block size (not r) sets the size."""

    def build(cfg: PeftConfig, model_type: str, total_steps: int):
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
def _hra(cfg: PeftConfig, model_type: str, total_steps: int):
    from peft import HRAConfig

    kw = dict(r=cfg.r, target_modules=_targets(cfg, model_type), modules_to_save=cfg.modules_to_save or None,
              task_type="CAUSAL_LM")
    return HRAConfig(**{**kw, **cfg.options})


@register_method("fourierft", "peft:FourierFTConfig", summary="learned spectral coefficients, "
                 "inverse DFT to a weight update (Gao et al., 2024)")
def _fourierft(cfg: PeftConfig, model_type: str, total_steps: int):
    from peft import FourierFTConfig

    kw = dict(n_frequency=100, scaling=150.0, target_modules=_targets(cfg, model_type),
              modules_to_save=cfg.modules_to_save or None, task_type="CAUSAL_LM")
    return FourierFTConfig(**{**kw, **cfg.options})


@register_method("ln_tuning", "peft:LNTuningConfig", summary="trains the norm layers only (Zhao et al., 2024)")
def _ln_tuning(cfg: PeftConfig, model_type: str, total_steps: int):
    from peft import LNTuningConfig

    kw: dict[str, Any] = dict(modules_to_save=cfg.modules_to_save or None, task_type="CAUSAL_LM")
    if cfg.target_modules != "auto":
        kw["target_modules"] = cfg.target_modules
    elif model_type in _LLAMA_LIKE:
        kw["target_modules"] = ["input_layernorm", "post_attention_layernorm", "norm"]
    return LNTuningConfig(**{**kw, **cfg.options})


@register_method("poly", "peft:PolyConfig", merges=False, shared_prefix=False, summary="Polytropon: a skill inventory of LoRAs "
                 "mixed per task (Ponti et al., 2023); one task (task id 0) unless options.n_tasks is set")
def _poly(cfg: PeftConfig, model_type: str, total_steps: int):
    from peft import PolyConfig

    kw = dict(r=cfg.r, target_modules=_targets(cfg, model_type), modules_to_save=cfg.modules_to_save or None,
              task_type="CAUSAL_LM", n_tasks=1, n_skills=4, n_splits=1)
    return PolyConfig(**{**kw, **cfg.options})


_INPUT_EMBEDDINGS = ("embed_tokens", "wte", "embed_in", "word_embeddings")


def _tuner(name: str, config: str, summary: str, **facts: Any) -> None:
    """One of this project's tuners (`core/tuners`)."""

    def build(cfg: PeftConfig, model_type: str, total_steps: int):
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
def _full(cfg: PeftConfig, model_type: str, total_steps: int):
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

    def build(cfg: PeftConfig, model_type: str, total_steps: int):
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
def _trainable_tokens(cfg: PeftConfig, model_type: str, total_steps: int):
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
def _xlora(cfg: PeftConfig, model_type: str, total_steps: int):
    from peft import XLoraConfig

    # hidden_size: None is filled in from the model by `attach_peft`
    return XLoraConfig(**{"task_type": "CAUSAL_LM", "hidden_size": None, **cfg.options})


@register_method("cpt", "peft:CPTConfig", merges=False, prompt=True, shared_prefix=False, required=("cpt_token_ids",),
                 required_hint="the tokenized few-shot context (and cpt_tokens_type_mask: 1 input template, 2 input, "
                               "3 output template, 4 output)",
                 summary="context-aware prompt tuning: the prompt is a few-shot context (options.cpt_token_ids, "
                         "cpt_tokens_type_mask) refined under a projection bound (Blau et al., 2024)")
def _cpt(cfg: PeftConfig, model_type: str, total_steps: int):
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


def _config_cls(spec: str):
    module, cls = spec.split(":")
    if module == "peft.mapping":
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

        return PEFT_TYPE_TO_CONFIG_MAPPING[cls.upper()]
    if module.startswith("peft_apps.core.tuners"):
        importlib.import_module("peft_apps.core.tuners")  # registers the tuners with peft
    return getattr(importlib.import_module(module), cls)


def nearest(name: str) -> str | None:
    """The known method name closest to `name` (a typo's likely meaning)."""
    names = list(METHODS)
    close = difflib.get_close_matches(name.lower().replace("-", "_"), names, n=1, cutoff=0.6)
    if close:
        return close[0]
    squashed = {n.replace("_", ""): n for n in names}
    return squashed.get(name.lower().replace("-", "").replace("_", ""))


def unknown_method_message(name: str) -> str:
    near = nearest(name)
    guess = f" (did you mean {near!r}?)" if near else ""
    return f"unknown PEFT method {name!r}{guess}"


def config_fields(method: str) -> set[str]:
    cls = METHODS[method].config_class()
    return {f.name for f in dataclasses.fields(cls)} if cls is not None else set()


def check_options(method: str, options: dict[str, Any]) -> None:
    """The `peft.options` keys the method cannot do without, and the keys its config does not take: one message
    naming them (and the ones it takes)."""
    from peft_apps.core.errors import UserError

    m = METHODS[method]
    if m.config is None:
        if options:
            raise UserError(f"peft.options ({', '.join(sorted(options))}) do not apply to peft.method={method}")
        return
    missing = [k for k in m.required if k not in options]
    if missing:
        raise UserError(f"peft.method={method} needs peft.options.{', peft.options.'.join(missing)}",
                        hint=m.required_hint or None)
    fields = config_fields(method) | set(m.extra_options)
    bad = sorted(set(options) - fields)
    if bad:
        cls = m.config_class()
        takes = sorted(f for f in fields if f not in ("peft_type", "task_type", "base_model_name_or_path",
                                                      "revision", "inference_mode", "auto_mapping"))
        raise UserError(f"peft.options: {', '.join(bad)} not taken by peft.method={method} ({cls.__name__})",
                        hint=f"{cls.__name__} takes: {', '.join(takes)}")


def check_recipe(recipe) -> None:
    """Refuse, before anything loads, a method that cannot work with the recipe's other settings."""
    from peft_apps.core.errors import UserError

    method = recipe.peft.method
    m = METHODS[method]
    if m.broken:
        raise UserError(f"peft.method={method} does not run with the installed peft: {m.broken}",
                        hint="see the README's method table for the methods that do")
    if m.needs_cuda:
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"peft.method={method} needs a CUDA GPU; this machine has none",
                            hint="peft.method=qlora trains on a 4-bit base on the CPU")
    if method == "adamss" and importlib.util.find_spec("sklearn") is None:
        raise UserError("peft.method=adamss needs scikit-learn, which is not installed",
                        hint="pip install -e \".[methods]\"")
    check_options(method, recipe.peft.options)
    quant = recipe.model.quantization
    if quant != "none" and method == "full":
        raise UserError("peft.method=full trains the weights themselves: a quantized base cannot be fully "
                        "fine-tuned", hint="set model.quantization=none, or use lora / qlora")
    if quant != "none" and not m.four_bit:
        raise UserError(f"peft.method={method} does not train on a quantized base (model.quantization={quant}): "
                        "peft has no bitsandbytes layers for it",
                        hint="model.quantization=none, or a method that does (see the README's method table: "
                             "lora, qlora, loftq, ia3, vera, randlora, ssf, layerwise, ...)")
    if method == "loftq" and quant != "nf4":
        raise UserError("peft.method=loftq starts LoRA from the 4-bit quantization error: it needs "
                        f"model.quantization=nf4 (it is {quant})", hint="model.quantization=nf4, or peft.method=lora")
    if m.prompt and recipe.train.batching == "packing":
        raise UserError(f"peft.method={method} adds virtual tokens to every sequence: it cannot train on packed "
                        "rows (train.batching=packing)", hint="train.batching=group_by_length (or auto)")


def build_peft_config(cfg: PeftConfig, model_type: str, total_steps: int = 1000):
    from peft_apps.core.errors import UserError

    check_options(cfg.method, cfg.options)
    try:
        return METHODS[cfg.method].build(cfg, model_type, total_steps)
    except (TypeError, ValueError) as e:  # a value peft's config refuses
        raise UserError(f"peft.method={cfg.method}: {e}") from None


def shared_prefix_ok(peft_config) -> bool:
    """Whether an adapter of this peft config runs on a cached prefix (its method's `shared_prefix`)."""
    if getattr(peft_config, "is_prompt_learning", False):
        return False
    kind = str(getattr(getattr(peft_config, "peft_type", None), "value", getattr(peft_config, "peft_type", "")))
    method = METHODS.get(kind.lower())
    return method.shared_prefix if method is not None else True


def method_table() -> str:
    """The README's method table (markdown), from the registry."""
    lines = ["| method | from | 4-bit base | merges | shared-prefix engine | what it is |", "|---|---|---|---|---|---|"]
    yes = {True: "yes", False: "no"}
    for name in sorted(METHODS):
        m = METHODS[name]
        note = f"**not usable with peft 0.21**: {m.broken}. " if m.broken else ""
        note += "Needs a CUDA GPU. " if m.needs_cuda else ""
        lines.append(f"| `{name}` | {m.source} | {yes[m.four_bit]} | {yes[m.merges]} | {yes[m.shared_prefix]} | "
                     f"{note}{m.summary} |")
    return "\n".join(lines)
