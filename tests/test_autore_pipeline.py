"""autore with a model: batched shared-prefix extraction equals the sequential loop; text input, spans,
windows, the spaCy component, and the CLI end to end."""

import json
import os

import pytest

from helpers.autore_fixtures import random_adapter
from peft_apps.apps.autore.docred import load_docs
from peft_apps.core.resources import data_dir
from helpers.preloaded import run_cli

SAMPLE = data_dir("autore", "redocred_dev_sample.json")


@pytest.fixture(scope="module")
def pipe(tmp_path_factory, _isolated_cache):
    from peft_apps.apps.autore import AutoRE

    ad = random_adapter(tmp_path_factory.mktemp("ad") / "a")
    return AutoRE.from_pretrained(None, str(ad), max_new_tokens=24, batch_size=8)


def test_batched_equals_sequential_teacher_forced(pipe):
    docs = load_docs(SAMPLE)[:3]
    fast = pipe.extract(docs, teacher_forced=True)
    for d, f in zip(docs, fast):
        s = pipe.extract_sequential(d, teacher_forced=True)
        rf, rs = f.raw["windows"][0], s.raw["windows"][0]
        assert rf["relation"] == rs["relation"] and rf["head"] == rs["head"] and rf["facts"] == rs["facts"]
        assert len(rf["facts"]) == len({(lab["r"], lab["h"]) for lab in d["labels"]})
        assert f.stats.get("calls_without_shared_prefix", 0) == 0
        assert f.stats["facts_calls"] == len(rf["facts"]) and f.triples == s.triples


def test_three_adapters_batched_equals_sequential(tmp_path):
    """One adapter per stage: each stage's prefixes are encoded under its own adapter (no cache shared
    across stages), and the outputs still equal the sequential loop's."""
    from peft_apps.apps.autore import AutoRE

    ads = {s: str(random_adapter(tmp_path / s, seed=i + 1)) for i, s in enumerate(("relation", "head", "facts"))}
    three = AutoRE.from_pretrained(None, ads, max_new_tokens=24, batch_size=8)
    docs = load_docs(SAMPLE)[6:8]
    fast = three.extract(docs, teacher_forced=True)
    for d, f in zip(docs, fast):
        s = three.extract_sequential(d, teacher_forced=True)
        assert f.raw == s.raw and f.triples == s.triples
        assert f.stats.get("calls_without_shared_prefix", 0) == 0


def test_batched_equals_sequential_free_running(pipe):
    docs = load_docs(SAMPLE)[3:6]
    fast = pipe.extract(docs)
    for d, f in zip(docs, fast):
        s = pipe.extract_sequential(d)
        assert f.raw["windows"][0]["relation"] == s.raw["windows"][0]["relation"]
        assert f.triples == s.triples


def test_prefix_plus_suffix_ids_equal_whole_prompt(pipe):
    """The cached prefix is a token prefix of every call's prompt (no BPE merge across the cut)."""
    from peft_apps.apps.autore.docred import passage, relation_table

    d = load_docs(SAMPLE)[0]
    text = passage(d)
    rel = pipe._ids("relation", passage=text)
    prefix = os.path.commonprefix([rel, pipe._ids("head", passage=text, relation="x", description="x")])
    assert len(prefix) > 0.9 * len(pipe.engine.tokenizer(text)["input_ids"])
    for rid, (name, desc) in list(relation_table().items())[:20]:
        ids = pipe._ids("facts", passage=text, relation=name, description=desc, head="Willi Schneider")
        assert ids[:len(prefix)] == prefix and len(ids) > len(prefix)


def test_plain_text_empty_text_and_windows(pipe):
    empty = pipe.extract("   ")
    assert empty.triples == [] and empty.stats == {}
    r = pipe.extract("Marie Curie was born in Warsaw. She moved to Paris in 1891.")
    assert r.stats["relation_calls"] == 1
    long_text = " ".join(f"Sentence number {i} mentions Paris and Rome and Berlin." for i in range(400))
    old = pipe.context
    pipe.context = 512
    try:
        res = pipe.extract(long_text)
    finally:
        pipe.context = old
    assert res.stats["windows"] > 1 and res.stats["relation_calls"] == res.stats["windows"]


def test_mentions_have_char_spans_and_sentence_ids():
    from peft_apps.apps.autore.pipeline import _mentions, text_to_doc

    text = "Marie Curie was born in Warsaw. Later Marie Curie moved to Paris."
    doc = text_to_doc(text)
    spans = _mentions(doc, "Marie Curie")
    assert [(m["start"], m["end"], m["sent_id"]) for m in spans] == [(0, 11, 0), (38, 49, 1)]
    assert all(text[m["start"]:m["end"]] == "Marie Curie" for m in spans)


def test_spacy_component_sets_relations(pipe, tmp_path):
    import spacy

    import peft_apps.apps.autore.spacy_component  # noqa: F401  (registers the factory)

    nlp = spacy.blank("en")
    ad = random_adapter(tmp_path / "ad")
    nlp.add_pipe("autore", config={"adapter": str(ad)})
    doc = nlp("Marie Curie was born in Warsaw.")
    assert isinstance(doc._.relations, list)
    for rel in doc._.relations:
        assert rel["head"] is None or rel["head"].text.lower() in doc.text.lower()


@pytest.mark.slow
def test_train_briefly_then_extract_through_cli(tmp_path):
    out = tmp_path / "run"
    p = run_cli(["peft-apps", "train", "autore", "-r", "demo",
                 "train.max_steps=6", "data.limit_train=3", f"train.output_dir={out}"])
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 6 and m["data"]["train"]["kept"] > 3
    doc = tmp_path / "doc.txt"
    doc.write_text("Willi Schneider was born in Mediaș , Transylvania . He is a German skeleton racer .")
    p = run_cli(["autore", "extract", str(doc), str(SAMPLE),
                 "--adapter", str(out), "--format", "jsonl", "-o", str(tmp_path / "out.jsonl")])
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 1 + 24 and rows[0]["id"] == str(doc)
    assert all({"title", "triples", "stats"} <= set(r) for r in rows)
    assert all(r["stats"].get("relation_calls", 0) >= 1 for r in rows)
    # -f json: one object for the run, with the documents and what happened on the way counted
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    p = run_cli(["autore", "extract", str(doc), str(empty),
                 "--adapter", str(out), "-f", "json"])
    assert p.returncode == 0, p.stderr[-2000:]
    run = json.loads(p.stdout)
    assert run["counts"]["documents"] == 2 and run["counts"]["empty_documents"] == 1
    assert run["counts"]["triples"] == sum(len(d["triples"]) for d in run["documents"])
    assert run["warnings"] == 1 and "empty input" in run["warning_messages"][0]
    assert "1 warning" in p.stderr
    # user errors: one line, exit 2
    p = run_cli(["autore", "extract", str(tmp_path / "missing.txt"),
                 "--adapter", str(out)])
    assert p.returncode == 2 and "input not found" in p.stderr and "Traceback" not in p.stderr
