"""Real tokenizers and chat templates, offline: the vendors' own files, from packages on the registry.

The builtin `tiny-*` models train a byte-level BPE of their own; the models users train do not. Where
users of peer tools lose most is in the tokenizer and its template: a doubled BOS, a missing end-of-turn
token, a prompt/completion boundary that tokenizes differently in training and at inference. These
builders give tiny random models the real thing, so the tests can check the ids the trainer trains on
against the vendor's reference encoding (`tests/test_real_tokenizers.py`):

    name        architecture  vocabulary (source)                               template, reference
    llama3      llama         Llama 3 tiktoken ranks + its 256 special tokens    Meta's chat format; Meta's
                              (`llama-models`: llama_models/llama3/)             `ChatFormat` encoder
    mistral-v3  mistral       Mistral's v3 SentencePiece model (`mistral-common`) `[INST]...[/INST]...</s>`;
                                                                                 mistral-common's instruct
                                                                                 encoder
    qwen2.5     qwen2         Qwen2's BPE from llama.cpp's `ggml-vocab-qwen2.gguf` Qwen2.5-Instruct's template
                              (`llama-cpp-python`'s sdist; bundled in data/)     as llama.cpp vendors it;
                                                                                 the whole conversation
                                                                                 tokenized at once

Each tokenizer's EOS is its family's end-of-turn token (`<|eot_id|>`, `</s>`, `<|im_end|>`), as the
instruct models configure it, so generation stops where a turn ends. Wrapped in transformers' fast
tokenizer and saved with the model (`tokenizer.json`), they load anywhere without these packages; only
building needs them (`pip install peft-apps[tokenizers]`).
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from peft_apps.core.errors import UserError
from peft_apps.core.resources import data_dir

# Meta's chat format (llama_models.llama3.chat_format.ChatFormat): every message is a header, its content as
# written (not stripped) and <|eot_id|>; the dialog starts with <|begin_of_text|>.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

# mistral-common's v3 instruct encoding (InstructTokenizerV3): <s>, each user turn as [INST] + its text +
# [/INST], each assistant turn as its text + </s>, each text encoded on its own (so with SentencePiece's
# dummy-prefix space, which the tokenizer adds to every text between special tokens: no space is written
# here); a system prompt goes before the last user message, joined by a blank line. An assistant turn's
# trailing spaces are dropped, as mistral-common drops them (`content.rstrip(" ")`); its newlines stay.
MISTRAL_V3_TEMPLATE = (
    "{%- set system = messages | selectattr('role', 'equalto', 'system') | map(attribute='content') | join('\n\n') %}"
    "{%- set turns = messages | rejectattr('role', 'equalto', 'system') | list %}"
    "{%- set last_user = turns | selectattr('role', 'equalto', 'user') | list | last %}"
    "{{ bos_token }}"
    "{%- for message in turns %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if system and message is sameas last_user %}[INST]{{ system }}\n\n{{ message['content'] }}[/INST]"
    "{%- else %}[INST]{{ message['content'] }}[/INST]{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}{{ message['content'].rstrip(' ') }}{{ eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
)


@dataclass(frozen=True)
class RealTokenizer:
    name: str  # `builtin:SIZE-<name>`
    architecture: str  # a key of core.tiny.FAMILIES
    vocabulary: str  # where the vocabulary comes from
    template: str  # where the chat template comes from
    reference: str  # what training ids are checked against
    package: str | None  # the Python package the files come from (None: bundled in data/)


REAL_TOKENIZERS: dict[str, RealTokenizer] = {
    "llama3": RealTokenizer("llama3", "llama", "llama-models: llama_models/llama3/tokenizer.model (tiktoken, 128,256 ids)",
                            "Meta's Llama 3 chat format", "llama_models.llama3.chat_format.ChatFormat", "llama_models"),
    "mistral-v3": RealTokenizer("mistral-v3", "mistral",
                                "mistral-common: mistral_instruct_tokenizer_240323.model.v3 (SentencePiece, 32,768 ids)",
                                "Mistral's v3 instruct format",
                                "mistral_common InstructTokenizerV3.encode_instruct", "mistral_common"),
    "qwen2.5": RealTokenizer("qwen2.5", "qwen2",
                             "llama.cpp models/ggml-vocab-qwen2.gguf (byte-level BPE, 151,665 ids; data/tokenizers/)",
                             "llama.cpp models/templates/Qwen-Qwen2.5-7B-Instruct.jinja",
                             "the whole conversation as the template renders it, tokenized at once", None),
}


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the real tokenizer needs the package {package!r}, which is not installed",
                        hint="pip install 'peft-apps[tokenizers]' (llama-models, mistral-common, gguf)")
    return Path(list(spec.submodule_search_locations)[0])


def _llama3():
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    path = _package_dir("llama_models") / "llama3" / "tokenizer.model"
    from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer

    meta = MetaTokenizer(path)
    tok = TikTokenConverter(vocab_file=str(path), pattern=meta.pat_str).converted()
    specials = sorted(meta.special_tokens.items(), key=lambda kv: kv[1])  # in id order: ids follow the ranks
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s, _ in specials])
    for s, i in specials:
        if tok.token_to_id(s) != i:
            raise RuntimeError(f"Llama 3 special token {s} got id {tok.token_to_id(s)}, Meta's table says {i}")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<|finetune_right_pad_id|>", model_max_length=8192)
    fast.chat_template = LLAMA3_TEMPLATE
    return fast


def _sentencepiece_bpe(path: Path):
    """A `tokenizers` BPE model that encodes as SentencePiece's BPE does: merges ranked by the merged piece's
    score (SentencePiece merges the adjacent pair whose result scores highest). transformers' conversion
    ranks them by id instead, which merges Mistral's whitespace pieces ("▁▁", score -1e9) first: "and  Pers"
    became "▁▁", "Pers" where SentencePiece gives "▁", "▁Pers"."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import models

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    normal = sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL
    merges = sorted((-p.score, i, k, p.piece[:k], p.piece[k:]) for i, p in enumerate(proto.pieces)
                    if p.type == normal for k in range(1, len(p.piece))
                    if p.piece[:k] in vocab and p.piece[k:] in vocab)
    return models.BPE(vocab=vocab, merges=[(a, b) for *_, a, b in merges], unk_token="<unk>",
                      byte_fallback=proto.trainer_spec.byte_fallback, fuse_unk=True)


def _mistral_v3():
    from tokenizers import Regex, normalizers, pre_tokenizers
    from transformers import LlamaTokenizer

    src = _package_dir("mistral_common") / "data" / "mistral_instruct_tokenizer_240323.model.v3"
    with tempfile.TemporaryDirectory() as tmp:  # converted from SentencePiece to a fast tokenizer
        shutil.copyfile(src, Path(tmp) / "tokenizer.model")
        tok = LlamaTokenizer.from_pretrained(tmp, legacy=True)
    backend = tok.backend_tokenizer
    backend.model = _sentencepiece_bpe(src)
    # SentencePiece's normalization: a dummy-prefix space on every text between special tokens (mistral-common
    # encodes each message on its own), even one that starts with spaces; spaces as "▁"
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    # and its words (SplitIntoWords with whitespace-only pieces allowed): a run of spaces with what follows it
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("▁*[^▁]+|▁+"), behavior="isolated")
    tok.pad_token = "<unk>"
    tok.chat_template = MISTRAL_V3_TEMPLATE
    return tok


def _qwen25():
    from transformers import AutoTokenizer

    _package_dir("gguf")
    folder = data_dir("tokenizers", "qwen2")
    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file="ggml-vocab-qwen2.gguf")
    tok.chat_template = (folder / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text(encoding="utf-8")
    tok.eos_token, tok.pad_token, tok.bos_token = "<|im_end|>", "<|endoftext|>", None  # Qwen has no BOS
    return tok


_BUILDERS = {"llama3": _llama3, "mistral-v3": _mistral_v3, "qwen2.5": _qwen25}


def build_real_tokenizer(name: str):
    """The fast tokenizer of `name` (a key of REAL_TOKENIZERS), its chat template set and EOS the end of a turn."""
    if name not in _BUILDERS:
        raise UserError(f"unknown real tokenizer {name!r}", hint=f"one of: {', '.join(REAL_TOKENIZERS)}")
    tok = _BUILDERS[name]()
    tok.padding_side = "right"
    return tok
