"""The architecture matrix: LoRA and QLoRA train a few steps and predict on tiny random models of the
common families, through the same recipe, trainer and engine a user runs (`model.base=builtin:tiny-X`).

Each family exercises a different part of the runtime choice: Gemma-2 has no SDPA path (eager attention)
and sliding-window layers, Phi-3 and GPT-NeoX fuse q/k/v into one projection, GPT-2 uses Conv1D layers,
Qwen-3 normalises q and k. `llama3`, `mistral-v3` and `qwen2.5` are Llama, Mistral and Qwen2 models with
the vendors' real tokenizers and chat templates (`core/real_tokenizers.py`; their encodings are checked
in test_real_tokenizers).
"""

import json
import math

import pytest

from helpers import synthetic
from peft_apps.core.real_tokenizers import REAL_TOKENIZERS
from peft_apps.core.tiny import FAMILIES

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("quantization", ["none", "nf4"])
@pytest.mark.parametrize("family", sorted(FAMILIES) + sorted(REAL_TOKENIZERS))
def test_family_trains_and_predicts(family, quantization, sft_app, tmp_path):
    from peft_apps.core.config import load_recipe
    from peft_apps.core.engine import Engine
    from peft_apps.core.trainer import train

    tr = synthetic.write(tmp_path / "t.jsonl", synthetic.make(24, 5))
    r = load_recipe(sft_app.recipe_path("demo"), [
        f"data.train={tr}", "data.template=default", "task.completion_field=completion",
        f"model.base=builtin:tiny-{family}", f"model.quantization={quantization}", "peft.target_modules=auto",
        "train.max_steps=3", "train.batch_size=8", "train.logging_steps=1", "train.report_to=[]",
        f"train.output_dir={tmp_path / 'run'}"])
    res = train(r, sft_app.training_records(r, "train"))
    m = res.metrics
    assert m["steps"] == 3 and math.isfinite(m["train_loss"])
    assert m["quantized"] is (quantization == "nf4")
    if family == "gemma2":
        assert m["attn_implementation"] == "eager"
    cfg = json.loads((res.output_dir / "adapter_config.json").read_text())
    assert cfg["target_modules"], "no module adapted"
    engine = Engine.from_pretrained(None, res.output_dir, dtype="float32")  # exact comparisons below, GPUs too
    outs = engine.chat([x.prompt for x in sft_app.training_records(r, "train")[:3]], max_new_tokens=3)
    assert len(outs) == 3 and all(isinstance(o, str) for o in outs)
    # the shared-prefix path (autore's) equals whole-prompt generation on every architecture, including
    # sliding-window layers (the tiny Gemma-2's window is 16 tokens: these rows outgrow it)
    tok = engine.tokenizer
    doc = tok("Passage: the river flows north to the sea past the old mill .", add_special_tokens=False)["input_ids"]
    suffixes = [tok(x, add_special_tokens=False)["input_ids"] for x in (" the river", " the mill and", " sea")]
    whole = [engine.generate_ids([doc + x], max_new_tokens=8)[0] for x in suffixes]
    prefix = engine.encode_prefix(doc)
    assert engine.generate_prefixed([(0, x) for x in suffixes], {0: prefix}, max_new_tokens=8) == whole
