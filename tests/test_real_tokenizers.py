"""Real tokenizers and chat templates (`core/real_tokenizers.py`): for every app's training records, the ids
the trainer trains on equal the vendor's reference encoding of the same conversation, through the
end-of-turn token; the labels cover exactly the completion and that token; inference feeds the prompt part
of the training ids and stops at the end of the turn; Ukrainian text and code round-trip.

References: Meta's `ChatFormat` (llama-models) for Llama 3, mistral-common's instruct encoder for Mistral v3,
and for Qwen2.5 the whole conversation as its template renders it, tokenized at once (what the vendor
trains on); the Qwen2 vocabulary itself is checked against llama.cpp's own test vectors.
"""

import json

import pytest

from peft_apps.core.config import load_recipe
from peft_apps.core.data import Record, render_prompt, tokenize_records
from peft_apps.core.real_tokenizers import REAL_TOKENIZERS
from peft_apps.core.registry import list_apps
from peft_apps.core.resources import data_dir

pytestmark = pytest.mark.slow

APPS = ["autore", "codereview", "exam", "sft", "testgen"]
UKRAINIAN = "Столиця України — Київ. Ґанок, їжак, є, ще: «лапки» та апостроф (м’ята, п'ять)!\n\tВідповідь: 1-Б, 2-Д"
CODE = ("def f(x: int) -> dict[str, list]:\n    \"\"\"Doc.\"\"\"\n\tif x >= 0 and x != 1:  # tabs, unicode: π\n"
        "        return {'a': [x ** 2, x // 3]}\n\n\n    raise ValueError(f\"{x!r}\")\n")


@pytest.fixture(scope="module", params=sorted(REAL_TOKENIZERS))
def real(request):
    from transformers import AutoTokenizer

    from peft_apps.core.tiny import builtin_model_path

    path = builtin_model_path(f"tiny-{request.param}")
    return request.param, path, AutoTokenizer.from_pretrained(path)


def _records(app: str, n: int = 3, system: str | None = None) -> list[Record]:
    a = list_apps()[app]
    r = load_recipe(a.recipe_path("demo" if "demo" in a.recipes() else None), app=app)
    recs = a.training_records(r, "train")[:n]
    if system:
        recs = [Record(x.id, [{"role": "system", "content": system}] + [m for m in x.prompt if m["role"] != "system"],
                       x.completion, x.meta) for x in recs]
    return recs


def reference_ids(name: str, tokenizer, rec: Record) -> list[int]:
    """The vendor's encoding of the conversation `rec` (prompt messages + the completion), through the
    assistant's end-of-turn token."""
    messages = rec.prompt + [{"role": "assistant", "content": rec.completion}]
    if name == "llama3":
        from llama_models.datatypes import RawMessage, StopReason
        from llama_models.llama3.chat_format import ChatFormat
        from llama_models.llama3.tokenizer import Tokenizer

        fmt = ChatFormat(Tokenizer.get_instance())
        ids = [fmt.tokenizer.special_tokens["<|begin_of_text|>"]]
        for m in messages:
            ids += fmt.encode_message(RawMessage(role=m["role"], content=m["content"],
                                                 stop_reason=StopReason.end_of_turn), None)[0]
        return ids
    if name == "mistral-v3":
        from mistral_common.protocol.instruct.messages import AssistantMessage, UserMessage
        from mistral_common.protocol.instruct.request import InstructRequest
        from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

        import mistral_common

        path = f"{mistral_common.__path__[0]}/data/mistral_instruct_tokenizer_240323.model.v3"
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system") or None
        turns = [UserMessage(content=m["content"]) if m["role"] == "user" else AssistantMessage(content=m["content"])
                 for m in messages if m["role"] != "system"]
        return MistralTokenizer.from_file(path).instruct_tokenizer.encode_instruct(
            InstructRequest(messages=turns, system_prompt=system)).tokens
    assert name == "qwen2.5"
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    last = max(i for i, t in enumerate(ids) if t == end)  # the assistant's turn is the last one
    return ids[: last + 1]


@pytest.mark.parametrize("app", APPS)
def test_training_ids_equal_the_vendors_reference_encoding(real, app):
    name, _, tok = real
    for system in (None, "Answer briefly."):
        recs = _records(app, system=system)
        cols, rep = tokenize_records(recs, tok, 100_000)
        assert rep.kept == len(recs) and rep.boundary_retokenized == 0
        for rec, ids, mask in zip(recs, cols["input_ids"], cols["completion_mask"]):
            ref = reference_ids(name, tok, rec)
            assert ids == ref, (name, app, rec.id, tok.convert_ids_to_tokens(ids[-8:]), tok.convert_ids_to_tokens(ref[-8:]))
            # one BOS (none where the family has none); the completion ends with one end-of-turn token
            assert ids.count(tok.bos_token_id) == (1 if tok.bos_token_id is not None else 0)
            n_prompt = mask.index(1)
            assert ids[n_prompt:].count(tok.eos_token_id) == 1 and ids[-1] == tok.eos_token_id
            # labels: exactly the completion and its end-of-turn token
            assert mask == [0] * n_prompt + [1] * (len(ids) - n_prompt)
            labelled = tok.decode(ids[n_prompt:], skip_special_tokens=False)
            assert labelled.strip() == rec.completion.strip() + tok.eos_token
            # inference feeds exactly the prompt part of the training ids
            assert tok(render_prompt(tok, rec.prompt), add_special_tokens=False)["input_ids"] == ids[:n_prompt]


def test_ukrainian_text_and_code_round_trip(real):
    name, _, tok = real
    for text in (UKRAINIAN, CODE):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids, skip_special_tokens=True) == text, name
    # the converted tokenizers split text exactly as the vendors' encoders, on real code and comments too
    rows = [json.loads(x) for x in data_dir("codereview", "msg-test.jsonl").read_text().splitlines()[:15]]
    texts = [UKRAINIAN, CODE, "a  b   c\n\n  d", "  lead", *(r["patch"] for r in rows), *(r["msg"] for r in rows)]
    if name == "llama3":
        from llama_models.llama3.tokenizer import Tokenizer

        vendor = lambda t: Tokenizer.get_instance().encode(t, bos=False, eos=False)  # noqa: E731
    elif name == "mistral-v3":
        import mistral_common
        from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

        sp = MistralTokenizer.from_file(f"{mistral_common.__path__[0]}/data/mistral_instruct_tokenizer_240323.model.v3"
                                        ).instruct_tokenizer.tokenizer
        vendor = lambda t: sp.encode(t, bos=False, eos=False)  # noqa: E731
    else:
        return  # Qwen2: llama.cpp's test vectors, below
    for text in texts:
        assert tok(text, add_special_tokens=False)["input_ids"] == vendor(text), repr(text[:80])


def test_qwen2_vocabulary_passes_llama_cpps_test_vectors():
    from transformers import AutoTokenizer

    from peft_apps.core.tiny import builtin_model_path

    tok = AutoTokenizer.from_pretrained(builtin_model_path("tiny-qwen2.5"))
    folder = data_dir("tokenizers", "qwen2")
    inputs = (folder / "ggml-vocab-qwen2.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    outputs = (folder / "ggml-vocab-qwen2.gguf.out").read_text(encoding="utf-8").strip().split("\n")
    assert len(outputs) >= 40
    for text, want in zip(inputs, outputs):
        assert tok(text, add_special_tokens=False)["input_ids"] == [int(x) for x in want.split()], repr(text)


def test_generation_stops_at_the_end_of_turn_token(real):
    """A model made to prefer the end-of-turn token after two tokens: the engine stops there, on the plain
    and the shared-prefix path, and the text holds no template markup."""
    import torch

    from peft_apps.core.engine import Engine

    name, path, tok = real
    engine = Engine.from_pretrained(str(path), None, dtype="float32")
    eot = tok.eos_token_id
    calls = {"n": 0}

    def prefer_eot(module, args, out):
        calls["n"] += 1
        out = out.clone()
        out[..., eot] = out.max() + 100.0 if calls["n"] > 2 else out.min() - 100.0
        return out

    head = engine.model.get_output_embeddings()
    handle = head.register_forward_hook(prefer_eot)
    try:
        rec = _records("exam", 1)[0]
        text = engine.chat([rec.prompt], max_new_tokens=20)[0]
    finally:
        handle.remove()
    produced = tok(text, add_special_tokens=False)["input_ids"]
    assert 0 < len(produced) <= 3 and tok.eos_token not in text, (name, text)


def test_every_stop_id_of_the_generation_config_ends_a_row():
    """Instruct models list several end ids in generation_config (Llama 3: <|end_of_text|>, <|eom_id|>,
    <|eot_id|>); the engine stops at each, and at the tokenizer's EOS."""
    from types import SimpleNamespace

    from peft_apps.core.engine.decode import stop_ids

    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[128001, 128008, 128009]))
    assert stop_ids(model, SimpleNamespace(eos_token_id=128009)) == {128001, 128008, 128009}
    assert stop_ids(SimpleNamespace(), SimpleNamespace(eos_token_id=2)) == {2}


EDGES = [  # user text whose edges are part of it: code ending in newlines, text with edge spaces and tabs
    {"id": "code", "prompt": "def add(a, b):\n    return a + b\n\n", "completion": "def test_add():\n    assert add(1, 2) == 3\n"},
    {"id": "spaces", "prompt": "   What type is 'Rome'?  ", "completion": " LOC "},
    {"id": "tabs", "prompt": "\tindented\n", "completion": "  yes\n\n"},
    {"id": "plain", "prompt": "Type of 'Kyiv'?", "completion": "LOC"},
]


def test_user_text_passes_the_template_unchanged_and_equals_the_vendors_encoding(real, tmp_path):
    """sft records read through the `default` template ({{ prompt }}): the prompt and completion keep their
    edge spaces and newlines, so the training ids equal the vendor's reference encoding of the raw texts."""
    name, _, tok = real
    a = list_apps()["sft"]
    path = tmp_path / "edges.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in EDGES))
    recipe = load_recipe(a.recipe_path("demo"), [f"data.train={path}", "data.template=default",
                                                 "task.completion_field=completion"], app="sft")
    recs = a.read(path, recipe)
    assert [r.prompt[-1]["content"] for r in recs] == [r["prompt"] for r in EDGES]
    assert [r.completion for r in recs] == [r["completion"] for r in EDGES]
    cols, rep = tokenize_records(recs, tok, 100_000)
    assert rep.kept == len(EDGES)
    for raw, rec, ids in zip(EDGES, recs, cols["input_ids"]):
        system = [m for m in rec.prompt if m["role"] == "system"]
        ref = reference_ids(name, tok, Record(raw["id"], system + [{"role": "user", "content": raw["prompt"]}],
                                              raw["completion"]))
        assert ids == ref, (name, raw["id"], tok.convert_ids_to_tokens(ids), tok.convert_ids_to_tokens(ref))
