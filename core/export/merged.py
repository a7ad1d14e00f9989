"""`--to merged`: HF safetensors of base + adapter, the tokenizer with the chat template, a generation_config
whose eos ids end a turn."""

from __future__ import annotations

from pathlib import Path


def _export_merged(adapter: Path, work: Path) -> None:
    from types import SimpleNamespace

    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from peft_apps.core.engine.decode import stop_ids
    from peft_apps.core.merge import merge_adapter

    merge_adapter(adapter, work)
    tok = AutoTokenizer.from_pretrained(str(work))
    # the generation config the merged model loads with (its file, else one from its config), read without
    # loading its weights again
    try:
        gen = GenerationConfig.from_pretrained(str(work))
    except OSError:
        gen = GenerationConfig.from_model_config(AutoConfig.from_pretrained(str(work)))
    eos = sorted(stop_ids(SimpleNamespace(generation_config=gen), tok))
    gen.eos_token_id = eos if len(eos) > 1 else eos[0]
    gen.pad_token_id = tok.pad_token_id
    gen.save_pretrained(str(work))
