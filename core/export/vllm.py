"""`--to vllm`: the adapter as vLLM loads it, and the `vllm serve` line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from peft_apps.core.errors import UserError


def _export_vllm(adapter: Path, work: Path, recipe) -> None:
    from peft_apps.core.serve.vllm import VLLM_RANKS, adapter_rank

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    if cfg.get("peft_type") != "LORA":
        raise UserError(f"{adapter}: vLLM loads LoRA adapters; this one is {cfg.get('peft_type')}",
                        hint="--to merged")
    if cfg.get("modules_to_save"):
        raise UserError(f"{adapter}: the run trains {', '.join(cfg['modules_to_save'])} in full "
                        "(peft.modules_to_save), which vLLM's LoRA cannot load", hint="--to merged")
    if cfg.get("use_dora"):
        raise UserError(f"{adapter}: vLLM does not load DoRA adapters", hint="--to merged")
    if not (adapter / "adapter_model.safetensors").is_file():
        raise UserError(f"{adapter} has no adapter_model.safetensors")
    work.mkdir(parents=True)
    for f in adapter.iterdir():
        if f.is_file() and (f.name.startswith(("adapter_", "tokenizer", "special_tokens", "chat_template"))
                            or f.name in ("recipe.yaml", "README.md")):
            shutil.copy2(f, work / f.name)
    if not (work / "tokenizer_config.json").is_file():  # a run folder without its tokenizer: the base's
        from peft_apps.core.modeling import load_tokenizer

        load_tokenizer(recipe.model).save_pretrained(str(work))
    rank = adapter_rank(adapter)
    rank = next((v for v in VLLM_RANKS if v >= rank), rank)
    name = adapter.name
    line = (f"vllm serve {cfg['base_model_name_or_path']} --enable-lora --max-lora-rank {rank} "
            f"--lora-modules {name}={work.with_name(work.name.removesuffix('.partial')).resolve()}")
    (work / "vllm_serve.txt").write_text(line + "\n")
