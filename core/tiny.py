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
    # GPU benchmark shapes, random weights (no hub on the device): a ~1.1B Llama (TinyLlama's shape) and
    # Llama-3-8B's shape. The tokenizer stays the 8k one; the embedding has the shape's full vocabulary.
    "1b": dict(
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
        num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=4096, tokenizer_vocab=8192,
    ),
    "8b": dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, tokenizer_vocab=8192,
        rope_theta=500000.0,
    ),
}

# Other architectures at the `tiny` size, as `builtin:tiny-<family>`: the architecture matrix test trains
# and predicts with each. Values map the Llama-style size onto each family's config names.
FAMILIES: dict[str, str] = {
    "llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "mistral": "mistral", "gemma2": "gemma2",
    "phi3": "phi3", "gpt-neox": "gpt_neox", "gpt2": "gpt2",
}


def _family_config(family: str, spec: dict, tokenizer):
    from transformers import AutoConfig

    model_type = FAMILIES[family]
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    vocab = max(spec["vocab_size"], len(tokenizer))
    hidden, heads = spec["hidden_size"], spec["num_attention_heads"]
    if model_type == "gpt2":
        return AutoConfig.for_model(model_type, vocab_size=vocab, n_embd=hidden, n_layer=spec["num_hidden_layers"],
                                    n_head=heads, n_inner=spec["intermediate_size"],
                                    n_positions=spec["max_position_embeddings"], **ids)
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=spec["intermediate_size"],
                  num_hidden_layers=spec["num_hidden_layers"], num_attention_heads=heads,
                  max_position_embeddings=spec["max_position_embeddings"], **ids)
    if model_type == "gpt_neox":
        return AutoConfig.for_model(model_type, **common, rotary_pct=0.25, use_parallel_residual=True)
    common["num_key_value_heads"] = spec["num_key_value_heads"]
    extra: dict = {}
    if model_type in ("llama", "mistral", "qwen2", "qwen3"):
        extra = dict(rms_norm_eps=1e-5, rope_theta=spec.get("rope_theta", 10000.0))
    if model_type in ("qwen3", "gemma2"):
        extra["head_dim"] = hidden // heads
    if model_type == "gemma2":
        extra.update(query_pre_attn_scalar=hidden // heads, sliding_window=16)
    return AutoConfig.for_model(model_type, **common, **extra)


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


def build_tiny_model(out_dir: str | Path, size: str = "tiny", seed: int = 0, family: str = "llama") -> Path:
    """Build the offline model `size` of architecture `family` into `out_dir`; returns the directory.

    Large shapes (`1b`, `8b`) are initialised on the GPU when there is one, in bf16."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from peft_apps.core.errors import UserError

    from peft_apps.core.real_tokenizers import REAL_TOKENIZERS, build_real_tokenizer

    if size not in SIZES:
        raise UserError(f"unknown tiny-model size {size!r}; choose one of: {', '.join(SIZES)}")
    if family not in FAMILIES and family not in REAL_TOKENIZERS:
        raise UserError(f"unknown model family {family!r}; choose one of: {', '.join([*FAMILIES, *REAL_TOKENIZERS])}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = dict(SIZES[size])
    vocab = spec.pop("tokenizer_vocab", spec["vocab_size"])
    if family in REAL_TOKENIZERS:  # a real vocabulary and chat template: the embedding takes its size
        tokenizer = build_real_tokenizer(family)
        arch = REAL_TOKENIZERS[family].architecture
        spec["vocab_size"] = len(tokenizer)
    else:
        tokenizer = build_tokenizer(vocab)
        arch = family
    torch.manual_seed(seed)
    config = _family_config(arch, spec, tokenizer)
    large = spec["hidden_size"] >= 2048
    device = "cuda" if large and torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if large else torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "peft_apps_tiny.json").write_text(
        json.dumps({"size": size, "family": family, "seed": seed, "parameters": model.num_parameters()}, indent=2)
    )
    return out


def parse_builtin(name: str) -> tuple[str, str]:
    """`tiny` -> ("tiny", "llama"); `tiny-gemma2` -> ("tiny", "gemma2"); unknown parts are UserErrors."""
    from peft_apps.core.errors import UserError
    from peft_apps.core.gguf import REAL_MODELS
    from peft_apps.core.real_tokenizers import REAL_TOKENIZERS

    size, _, family = name.partition("-")
    family = family or "llama"
    if size not in SIZES or (family not in FAMILIES and family not in REAL_TOKENIZERS):
        raise UserError(f"unknown builtin model 'builtin:{name}'",
                        hint="choose builtin:SIZE or builtin:SIZE-FAMILY with SIZE one of " + ", ".join(SIZES)
                        + " and FAMILY one of " + ", ".join(FAMILIES) + "; or a real tokenizer and template: "
                        + ", ".join(REAL_TOKENIZERS) + "; or a real pretrained model: "
                        + ", ".join(f"builtin:{n}" for n in REAL_MODELS))
    return size, family


def builtin_model_path(name: str) -> Path:
    """Path of the cached offline model `name` (`tiny`, `small`, `tiny-qwen2`, `1b`, ...), built on first use."""
    import hashlib

    from peft_apps.core.real_tokenizers import REAL_TOKENIZERS

    size, family = parse_builtin(name)
    parts = [SIZES[size], CHAT_TEMPLATE, SPECIAL_TOKENS] + ([family] if family != "llama" else [])
    if family in REAL_TOKENIZERS:
        parts = [SIZES[size], family, 8]  # the real tokenizer's builder version (8: Mistral drops trailing spaces)
    key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:8]
    path = cache_dir() / "models" / f"builtin-{name}-{key}"
    if not (path / "config.json").is_file() or not (path / "peft_apps_tiny.json").is_file():
        tmp = path.with_name(path.name + ".partial")
        build_tiny_model(tmp, size=size, family=family)
        if path.exists():
            import shutil

            shutil.rmtree(path)
        tmp.rename(path)
    return path
