"""PEFT methods by name: every method peft implements, this project's own tuners (`core/tuners`), and named
recipes of LoRA (its initialisations, rsLoRA, LoRA+, QLoRA, DoRA) and full fine-tuning.

A method is a `Method`: a builder `(PeftConfig section, model_type, total_steps) -> peft config`, the config
class whose fields `peft.options` may set, and what it works with: 4-bit bases, merging, the shared-prefix
engine, packing. `check_recipe` refuses a combination that cannot work before anything loads; the facts
are checked against peft itself for every method by tests/test_methods.py (a real 4-bit base, a real merge).

Registering a method: `register_method(Method(...))`, or `@register_method("name", config="peft.XConfig")`
on a builder.

    registry.py  `Method`, `METHODS`, `register_method`, the recipe checks, `build_peft_config`, the table
    builders.py  the default targets, LoRA and its recipes, peft's methods with settings of their own
    generic.py   this project's tuners, full fine-tuning, peft's other methods (its defaults)
"""

from __future__ import annotations

from . import builders, generic  # (registers every method)
from .builders import ATTN, DEFAULT_TARGETS, MLP, default_targets
from .registry import (METHODS, PEFT_TYPES, Builder, Method, PeftSection, build_peft_config, check_options,
                       check_recipe, config_fields, method_table, nearest, register_method, shared_prefix_ok,
                       unknown_method_message)

__all__ = ["builders", "generic", "ATTN", "DEFAULT_TARGETS", "METHODS", "MLP", "PEFT_TYPES", "Builder", "Method", "PeftSection",
           "build_peft_config", "check_options", "check_recipe", "config_fields", "default_targets", "method_table",
           "nearest", "register_method", "shared_prefix_ok", "unknown_method_message"]
