"""The method registry: `Method` records by name (`METHODS`), how a recipe's method is checked before
anything loads, its peft config built, and the README's method table written. The builders that fill
it are in `builders.py`."""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
from typing import Any, Callable, Protocol


class PeftSection(Protocol):
    """What a builder reads of a recipe's `peft:` section (`config.PeftConfig`; typed here so that this
    registry, which `config` consults, never imports `config`)."""

    method: str
    r: int
    alpha: int
    dropout: float
    target_modules: Any  # a list of module names, "auto" or "all-linear"
    modules_to_save: list[str]
    num_virtual_tokens: int
    prompt_init_text: str | None
    init_r: int
    target_r: int
    options: dict[str, Any]
    model_fields_set: set[str]  # the keys the recipe set (pydantic)


Builder = Callable[[PeftSection, str, int], Any]


# peft 0.21's methods (PeftType, lower case); tests/test_methods.py checks the list against peft itself
PEFT_TYPES = (
    "prompt_tuning", "multitask_prompt_tuning", "p_tuning", "prefix_tuning", "lora", "adalora", "adamss", "boft",
    "adaption_prompt", "ia3", "beft", "lily", "loha", "lokr", "oft", "poly", "ln_tuning", "vera", "frod", "pvera",
    "fourierft", "glora", "xlora", "hra", "vblora", "unilora", "cpt", "miss", "randlora", "road",
    "trainable_tokens", "hira", "shira", "c3a", "waveft", "osf", "delora", "gralora", "cartridge", "tinylora",
    "psoft", "peanut", "shadow", "supertuning", "deft",
)


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


def build_peft_config(cfg: PeftSection, model_type: str, total_steps: int = 1000):
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
