"""Build a small Llama-architecture model and its tokenizer offline, in standard Hugging Face format.

Nothing is downloaded: the byte-level BPE tokenizer is trained with `tokenizers` on the text samples
that ship in `data/` plus a fixed synthetic corpus, and the model is randomly initialised from a
`LlamaConfig`. Tests and the demo use `tiny` (about 0.4M parameters); benchmarks use `small` (about
32M parameters, so that compute rather than Python overhead dominates a step).

A randomly initialised base barely learns through LoRA alone: recipes for these models also train
`lm_head` (`peft.modules_to_save`), which lets them learn a small task within a minute on a CPU.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from peft_apps.core.resources import cache_dir, data_dir

# Output widths are multiples of 32: bitsandbytes' CPU 4-bit kernels need that.
SIZES: dict[str, dict] = {
    "tiny": dict(
        vocab_size=2048, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
    ),
    "small": dict(
        vocab_size=8192, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=4096,
    ),
}

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|unk|>"]

# `{% generation %}` marks the assistant's tokens, so `return_assistant_tokens_mask` works.
# The prompt rendered with `add_generation_prompt` is a prefix of the full conversation.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>\n{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}\n"
    "{% else %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _corpus(max_chars: int = 3_000_000) -> list[str]:
    """Deterministic training text: the bundled samples, then synthetic lines for digits and symbols."""
    texts: list[str] = []
    root = data_dir()
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            if path.suffix in {".jsonl", ".json", ".txt", ".md"} and path.is_file():
                texts.append(path.read_text(encoding="utf-8", errors="replace"))
    rng = random.Random(0)
    words = "the a of and to in is was for on with as by at from that this it be are".split()
    lines = []
    for _ in range(20000):
        n = rng.randint(0, 99999)
        lines.append(f"{rng.choice(words)} {n} {n % 97} ({rng.choice(words)}, {rng.random():.3f})")
    texts.append("\n".join(lines))
    out, total = [], 0
    for t in texts:
        for chunk_start in range(0, len(t), 10000):
            chunk = t[chunk_start : chunk_start + 10000]
            out.append(chunk)
            total += len(chunk)
            if total >= max_chars:
                return out
    return out


def build_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        unk_token="<|unk|>",
        model_max_length=SIZES["small"]["max_position_embeddings"],
        padding_side="right",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(out_dir: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Build the offline model `size` ('tiny' or 'small') into `out_dir`; returns the directory."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if size not in SIZES:
        from peft_apps.core.errors import UserError

        raise UserError(f"unknown tiny-model size {size!r}; choose one of: {', '.join(SIZES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = SIZES[size]
    tokenizer = build_tokenizer(spec["vocab_size"])
    torch.manual_seed(seed)
    config = LlamaConfig(
        **{**spec, "vocab_size": len(tokenizer)},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "peft_apps_tiny.json").write_text(
        json.dumps({"size": size, "seed": seed, "parameters": model.num_parameters()}, indent=2)
    )
    return out


def builtin_model_path(size: str) -> Path:
    """Path of the cached offline model `size`, built on first use."""
    import hashlib

    key = hashlib.sha256(json.dumps([SIZES[size], CHAT_TEMPLATE, SPECIAL_TOKENS]).encode()).hexdigest()[:8]
    path = cache_dir() / "models" / f"builtin-{size}-{key}"
    if not (path / "config.json").is_file() or not (path / "peft_apps_tiny.json").is_file():
        tmp = path.with_name(path.name + ".partial")
        build_tiny_model(tmp, size=size)
        if path.exists():
            import shutil

            shutil.rmtree(path)
        tmp.rename(path)
    return path
