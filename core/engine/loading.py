"""Loading for inference: the base model (from a recipe's model section, an adapter's recipe, or a
name) and any number of named adapters on it, with one clear error when an adapter does not fit."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from peft_apps.core.config import ModelConfig
from peft_apps.core.errors import UserError
from peft_apps.core.run_folder import check_run_folder, is_full_model  # noqa: F401  (re-exported)


def adapter_base_config(adapter_dir: str | Path) -> ModelConfig:
    """The model section of the recipe an adapter was trained with (recipe.yaml beside it)."""
    import yaml

    d = Path(adapter_dir)
    check_run_folder(d)
    recipe = d / "recipe.yaml"
    if is_full_model(d):  # the folder is the model; its recipe says how it was loaded for training
        data = (yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}) if recipe.is_file() else {}
        return ModelConfig.model_validate({**data.get("model", {}), "base": str(d), "revision": None})
    if recipe.is_file():
        data = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
        return ModelConfig.model_validate(data.get("model", {}))
    base = json.loads((d / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{d}: cannot tell which base model the adapter belongs to; pass --model")
    return ModelConfig(base=base)


@contextlib.contextmanager
def _quiet_loading():
    """No per-weight progress bars or deprecation warnings from the libraries while loading (PEFT_APPS_VERBOSE=1
    shows them); the caller's settings are put back after."""
    import os
    import warnings

    if os.environ.get("PEFT_APPS_VERBOSE"):
        yield
        return
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load(base: str | ModelConfig | None = None, adapters: str | Path | dict[str, str | Path] | None = None,
         quantize: bool | None = None, dtype: str | None = None) -> tuple[Any, Any, list[str]]:
    """`base`: hub id, path, `builtin:*` or a ModelConfig; None takes it from the first adapter's recipe.

    `adapters`: one folder, or {name: folder}. `quantize` defaults to the recipe's setting; `dtype`
    ("float32", "bfloat16", ...) to the runtime's choice (bf16 on a GPU that has it, fp32 on a CPU).
    """
    with _quiet_loading():
        return _load(base, adapters, quantize, dtype)


def _load(base, adapters, quantize, dtype) -> tuple[Any, Any, list[str]]:
    from peft import PeftModel

    from peft_apps.core.modeling import default_task_ids, load_base_model, load_tokenizer

    if isinstance(adapters, (str, Path)):
        adapters = {"default": adapters}
    adapters = dict(adapters or {})
    full = [p for p in adapters.values() if is_full_model(p)]
    if full:  # a fully fine-tuned model is the base itself: it takes no adapters beside it
        if len(adapters) > 1:
            raise UserError(f"{full[0]} is a fully fine-tuned model, not an adapter: it cannot share a base with "
                            f"other adapters", hint="load it alone (--adapter DIR)")
        if base is not None and not isinstance(base, ModelConfig):
            raise UserError(f"{full[0]} is a fully fine-tuned model: it is its own base, so --model does not apply")
        base, adapters = adapter_base_config(full[0]), {}
    if isinstance(base, ModelConfig):
        mcfg = base
    elif base is None:
        if not adapters:
            raise UserError("no base model and no adapter given")
        mcfg = adapter_base_config(next(iter(adapters.values())))
    else:
        mcfg = ModelConfig(base=base)
        if adapters:  # keep the adapter's quantization unless told otherwise
            try:
                trained = adapter_base_config(next(iter(adapters.values())))
                mcfg = mcfg.model_copy(update={"quantization": trained.quantization, "dtype": trained.dtype})
            except UserError:
                pass
    if quantize is False:
        mcfg = mcfg.model_copy(update={"quantization": "none"})
    if dtype is not None:
        mcfg = mcfg.model_copy(update={"dtype": dtype})
    model = load_base_model(mcfg)
    model.config.use_cache = True
    first = next(iter(adapters), None)
    tok_dir = str(adapters[first]) if first and (Path(adapters[first]) / "tokenizer_config.json").is_file() \
        else None
    tokenizer = load_tokenizer(mcfg, tok_dir)
    if adapters:
        for name, path in adapters.items():
            check_run_folder(path)
            try:
                if isinstance(model, PeftModel):
                    model.load_adapter(str(path), adapter_name=name)
                else:
                    import peft_apps.core.tuners  # noqa: F401  this project's tuners, registered with peft

                    model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
            except RuntimeError as e:
                if "size mismatch" not in str(e):
                    raise
                raise UserError(f"adapter {path} does not fit base model {mcfg.base!r}: "
                                f"{str(e).splitlines()[1].strip()}",
                                hint="pass the base model the adapter was trained on (--model)") from None
        model.set_adapter(first)
        default_task_ids(model)
    return model, tokenizer, list(adapters)

