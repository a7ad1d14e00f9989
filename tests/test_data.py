import json

import pytest

from peft_apps.core import UserError
from peft_apps.core.data import Record, read_jsonl, render_prompt, require, tokenize_records
from peft_apps.core.config import load_recipe


def test_malformed_json_line_names_file_and_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": \n')
    with pytest.raises(UserError) as ei:
        list(read_jsonl(p))
    assert f"{p}:2" in str(ei.value)


def test_missing_and_mistyped_field_named(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "a"}\n')
    with pytest.raises(UserError, match=r"d.jsonl:3: missing field 'completion'"):
        [require(obj, "completion", f"{p}:{n}") for n, obj in read_jsonl(p)]
    p.write_text('{"prompt": "a", "completion": 3}\n')
    with pytest.raises(UserError, match=r"d.jsonl:1: field 'completion' must be str, got int"):
        [require(obj, "completion", f"{p}:{n}") for n, obj in read_jsonl(p)]


def test_sft_app_names_file_line_and_field(tmp_path, sft_app):
    p = tmp_path / "train.jsonl"
    p.write_text('{"id": "a", "entity": "Paris", "sentence": "s", "type": "LOC"}\n'
                 '{"id": "b", "entity": "Rome", "sentence": "s"}\n')
    r = load_recipe(sft_app.recipe_path("demo"), [f"data.train={p}"])
    with pytest.raises(UserError) as ei:
        sft_app.training_records(r, "train")
    assert f"{p}:2" in str(ei.value) and "'type'" in str(ei.value)
    p.write_text('{"id": "a", "sentence": "s", "type": "LOC"}\n')
    with pytest.raises(UserError, match=r"train.jsonl:1: prompt template entity_type.j2 needs .*entity"):
        sft_app.training_records(r, "train")


def test_tokenize_masks_completion_and_reports_truncation(tiny_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_path)
    recs = [Record.simple("short", "hello", "world"),
            Record.simple("long", "word " * 20, "answer " * 40),
            Record.simple("hopeless", "word " * 200, "x")]
    def encode_prompt(messages):
        return tok(render_prompt(tok, messages), add_special_tokens=False)["input_ids"]

    limit = len(encode_prompt(recs[1].prompt)) + 5
    assert len(encode_prompt(recs[2].prompt)) > limit
    cols, rep = tokenize_records(recs, tok, max_length=limit)
    assert rep.records == 3 and rep.kept == 2 and rep.truncated == 1 and rep.dropped == 1
    assert rep.truncated_ids == ["long"] and rep.dropped_ids == ["hopeless"]
    assert cols["id"] == ["short", "long"] and all(n <= limit for n in cols["length"])
    # the unmasked tokens of the short record decode to the completion and the end-of-turn marker
    ids, mask = cols["input_ids"][0], cols["completion_mask"][0]
    completion = tok.decode([i for i, m in zip(ids, mask) if m])
    assert completion.startswith("world<|end|>")
    # prompt part equals the rendered prompt alone (what inference feeds the model)
    prompt_ids = [i for i, m in zip(ids, mask) if not m]
    assert prompt_ids == tok(tok.apply_chat_template(recs[0].prompt, tokenize=False, add_generation_prompt=True),
                             add_special_tokens=False)["input_ids"]
    cols, rep = tokenize_records(recs, tok, max_length=limit, truncation="drop")
    assert rep.dropped == 2 and rep.truncated == 0


def test_tiny_tokenizer_round_trips_text(tiny_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_path)
    for text in ["Wilfried \" Willi \" Schneider (born 13 March 1963)", "Київ — столиця", "def f(x):\n\treturn x"]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert json.loads((tiny_path / "peft_apps_tiny.json").read_text())["size"] == "tiny"
