"""autore without a model: DocRED checks, the converter, parsing and scoring."""

import copy
import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peft_apps.apps.autore.docred import load_docs, mention_names, relation_table, stage_examples
from peft_apps.apps.autore.parse import Passage, parse_facts, parse_heads, parse_relations, parse_triple_lines
from peft_apps.core import UserError, get_app
from peft_apps.core.resources import data_dir
from helpers.preloaded import run_cli

SHARED_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "redocred" / "dev_revised.json"
SAMPLE = data_dir("autore", "redocred_dev_sample.json")


def dev_file() -> Path:
    return SHARED_DEV if SHARED_DEV.is_file() else SAMPLE


def test_relation_table_covers_rel_info():
    rel_info = json.loads(data_dir("autore", "rel_info.json").read_text())
    table = relation_table()
    assert set(table) == set(rel_info) and len(table) == 96
    assert all(table[k][0] == v for k, v in rel_info.items())
    assert all(", e.g. " in desc and "->" in desc for _, desc in table.values())


def test_converter_counts_match_labels(tmp_path):
    src = dev_file()
    docs = json.loads(src.read_text())
    report = get_app("autore").convert(src, tmp_path)
    labelled = [d for d in docs if d["labels"]]
    want_heads = sum(len({lab["r"] for lab in d["labels"]}) for d in labelled)
    want_facts = sum(len({(lab["r"], lab["h"]) for lab in d["labels"]}) for d in labelled)
    assert report["records"] == {"relation": len(labelled), "head": want_heads, "facts": want_facts,
                                 "documents_without_labels": len(docs) - len(labelled)}
    for stage in ("relation", "head", "facts"):
        lines = (tmp_path / f"{stage}.jsonl").read_text().splitlines()
        assert len(lines) == report["records"][stage]
    if src == SHARED_DEV:
        assert report["records"]["relation"] == 499 and report["documents"] == 500


def test_facts_cover_every_mention_name_combination():
    doc = json.loads(SAMPLE.read_text())[0]
    ex = stage_examples([doc])
    lab = doc["labels"][0]
    name = relation_table()[lab["r"]][0]
    rec = next(x for x in ex.facts if x["id"] == f"0/facts/{lab['r']}/{lab['h']}")
    lines = set(rec["completion"].split("\n"))
    for hn in mention_names(doc["vertexSet"][lab["h"]]):
        for tn in mention_names(doc["vertexSet"][lab["t"]]):
            assert f"{hn} | {name} | {tn}" in lines


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d.pop("vertexSet"), "missing field 'vertexSet'"),
    (lambda d: d["labels"][2].__setitem__("h", 999), "labels[2].h = 999 points outside vertexSet"),
    (lambda d: d["labels"][0].pop("r"), "labels[0] missing field 'r'"),
    (lambda d: d["labels"][1].__setitem__("r", "P0"), "labels[1].r = 'P0' is not a DocRED relation id"),
])
def test_bad_document_names_index_title_and_field(tmp_path, mutate, needle):
    docs = json.loads(SAMPLE.read_text())[:3]
    mutate(docs[1])
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(docs))
    with pytest.raises(UserError) as ei:
        load_docs(p)
    msg = str(ei.value)
    assert needle in msg and "document 1" in msg and repr(docs[1]["title"]) in msg and str(p) in msg


def _gold_preds(docs):
    return {i: [(d["vertexSet"][lab["h"]][0]["name"], lab["r"], d["vertexSet"][lab["t"]][0]["name"])
                for lab in d["labels"]] for i, d in enumerate(docs)}


def test_scoring_gold_vs_gold_is_perfect():
    from peft_apps.apps.autore.metrics.docred import score_names as score_docs

    docs = load_docs(SAMPLE)
    m = score_docs(docs, _gold_preds(docs))
    assert m["precision"] == m["recall"] == m["f1"] == 1.0
    # the official metric needs entity indices: names shared by two entities can map to one of them
    assert m["docred_re_f1"] > 0.99 and m["unmapped_triples"] == 0


def test_scoring_known_perturbations_hand_computed():
    """Drop 10 gold triples, add 5 wrong ones, add 3 name variants of kept triples."""
    from peft_apps.apps.autore.metrics.docred import score_names as score_docs

    docs = load_docs(SAMPLE)
    from peft_apps.apps.autore.metrics.docred import norm

    preds = _gold_preds(docs)
    n_gold = sum(len({(lab["r"], frozenset(norm(m["name"]) for m in d["vertexSet"][lab["h"]]),
                       frozenset(norm(m["name"]) for m in d["vertexSet"][lab["t"]])) for lab in d["labels"]})
                 for d in docs)
    assert len(set(preds[0][:10])) == 10 and not set(preds[0][:10]) & set(preds[0][10:])
    preds[0] = preds[0][10:]
    # wrong relation for existing pairs: false positives
    d1 = docs[1]
    wrong = [(d1["vertexSet"][lab["h"]][0]["name"], "P3373" if lab["r"] != "P3373" else "P26",
              d1["vertexSet"][lab["t"]][0]["name"]) for lab in d1["labels"][:5]]
    assert not any(w[1] == lab["r"] for w, lab in zip(wrong, d1["labels"][:5]))
    gold_keys = {(lab["r"], lab["h"], lab["t"]) for lab in d1["labels"]}
    name_to_ent = {}
    for ei, ent in enumerate(d1["vertexSet"]):
        for mm in ent:
            name_to_ent.setdefault(mm["name"], ei)
    wrong = [w for w in wrong if (w[1], name_to_ent[w[0]], name_to_ent[w[2]]) not in gold_keys]
    preds[1] = preds[1] + wrong
    # name variants of an already predicted gold triple: neither hits nor errors
    doc2 = docs[2]
    variants = []
    for lab in doc2["labels"]:
        names = mention_names(doc2["vertexSet"][lab["h"]])
        if len(names) > 1:
            variants.append((names[1], lab["r"], doc2["vertexSet"][lab["t"]][0]["name"]))
        if len(variants) == 3:
            break
    preds[2] = preds[2] + variants
    m = score_docs(docs, preds)
    tp = n_gold - 10
    p, r = tp / (tp + len(wrong)), tp / n_gold
    assert m["tp"] == tp and m["predicted"] == tp + len(wrong) and m["gold"] == n_gold
    assert m["precision"] == pytest.approx(p) and m["recall"] == pytest.approx(r)
    assert m["f1"] == pytest.approx(2 * p * r / (p + r))


def test_official_submission_format_and_ign_f1(tmp_path):
    from peft_apps.core import get_app
    from peft_apps.core.config import Recipe

    def score_files(gold, pred, train=None):
        recipe = Recipe(app="autore", task={"train_file": str(train)} if train else {})
        return get_app("autore").score(gold, pred, recipe)

    docs = json.loads(SAMPLE.read_text())
    sub = [{"title": d["title"], "h_idx": lab["h"], "t_idx": lab["t"], "r": lab["r"], "evidence": lab["evidence"]}
           for d in docs for lab in d["labels"]]
    half = sub[: len(sub) // 2] + [dict(sub[0], r="P3373" if sub[0]["r"] != "P3373" else "P26")]
    p = tmp_path / "sub.json"
    p.write_text(json.dumps(half))
    m = score_files(SAMPLE, p)
    n = len(sub)
    correct = len(sub) // 2
    assert m["docred_correct"] == correct and m["docred_predicted"] == correct + 1
    assert m["docred_re_precision"] == pytest.approx(correct / (correct + 1))
    assert m["docred_re_recall"] == pytest.approx(correct / n)
    good_evi = sum(len(x["evidence"]) for x in sub[: len(sub) // 2])
    assert m["docred_evidence_precision"] == pytest.approx(good_evi / (good_evi + len(sub[0]["evidence"])))
    # Ign F1: with the gold file itself as "train", every correct fact is seen in train
    m2 = score_files(SAMPLE, p, train=SAMPLE)
    assert m2["docred_correct_in_train"] == correct and m2["docred_ign_f1"] < 0.01


def test_score_cli_raw_model_text(tmp_path):
    docs = json.loads(SAMPLE.read_text())
    rel = relation_table()
    rows = []
    for i, d in enumerate(docs):
        lines = [f"{d['vertexSet'][lab['h']][0]['name']} | {rel[lab['r']][0]} | {d['vertexSet'][lab['t']][0]['name']}"
                 for lab in d["labels"]]
        rows.append({"id": d["title"], "output": "\n".join(lines + ["garbage line"])})
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "m.json"
    p = run_cli(["peft-apps", "score", "autore", "--gold", str(SAMPLE),
                 "--pred", str(pred), "-o", str(out), "task.inverse=false"])
    assert p.returncode == 0, p.stderr
    m = json.loads(out.read_text())
    assert m["f1"] == pytest.approx(1.0) and m["parse_counts"]["malformed_fact"] == len(docs)
    # by default text is parsed as `eval` parses it: inverse triples added, so recall stays whole
    p = run_cli(["peft-apps", "score", "autore", "--gold", str(SAMPLE),
                 "--pred", str(pred), "-o", str(out), "--force"])
    m = json.loads(out.read_text())
    assert m["recall"] == pytest.approx(1.0) and m["predicted"] > m["tp"] == m["gold"]
    p = run_cli(["peft-apps", "score", "autore", "--gold", str(SAMPLE),
                 "--pred", str(pred), f"task.train_file={SAMPLE}", "-o", str(out), "--force"])
    assert p.returncode == 0, p.stderr
    assert json.loads(out.read_text())["docred_ign_f1"] < 0.05  # every fact is "seen in train" here
    # the same outputs without ids join by position; positions given as ids are ids, never a fallback
    pred.write_text("".join(json.dumps({"output": r["output"]}) + "\n" for r in rows))
    p = run_cli(["peft-apps", "score", "autore", "--gold", str(SAMPLE), "--pred", str(pred), "-o", str(out),
                 "task.inverse=false", "--force"])
    assert p.returncode == 0 and json.loads(out.read_text())["f1"] == pytest.approx(1.0), p.stderr
    pred.write_text('{"id": 999, "output": ""}\n')
    p = run_cli(["peft-apps", "score", "autore", "--gold", str(SAMPLE),
                 "--pred", str(pred)])
    assert p.returncode == 2 and "no prediction id is a record id" in p.stderr and "'999'" in p.stderr
    assert "Traceback" not in p.stderr


PASSAGE = Passage("Marie Curie was born in Warsaw . She moved to Paris in 1891 .")


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parsers_never_raise_on_arbitrary_text(text):
    stats = Counter()
    rels = parse_relations(text, stats)
    heads = parse_heads(text, PASSAGE, stats)
    facts = parse_facts(text, "P19", PASSAGE, stats)
    free = parse_triple_lines(text, PASSAGE, stats)
    assert all(r in relation_table() for r in rels)
    assert all(h in PASSAGE.text for h in heads)
    assert all(f.head in PASSAGE.text and f.tail in PASSAGE.text for f in facts + free)
    assert all(v > 0 for v in stats.values())


def test_parsers_drop_and_count():
    stats = Counter()
    assert parse_relations("place of birth\n- country\nnot a relation\n1. place of birth", stats) == ["P19", "P17"]
    assert stats["unknown_relation"] == 1
    assert parse_heads("marie curie\nNobody Here\nWarsw", PASSAGE, stats) == ["Marie Curie", "Warsaw"]
    assert stats["head_not_in_text"] == 1
    facts = parse_facts("Marie Curie | place of birth | Warsaw\nbroken line\nMarie Curie | spouse | Paris\n"
                        "Marie Curie | place of birth | Atlantis", "P19", PASSAGE, stats)
    assert [(f.head, f.relation_id, f.tail) for f in facts] == [("Marie Curie", "P19", "Warsaw")]
    assert stats["malformed_fact"] == 1 and stats["fact_relation_mismatch"] == 1
    assert stats["fact_entity_not_in_text"] == 1


def test_inverse_relations_added():
    from peft_apps.apps.autore.parse import Triple, add_inverses

    out = add_inverses([Triple("Scotland", "P361", "United Kingdom"), Triple("A", "P26", "B")])
    assert Triple("United Kingdom", "P527", "Scotland", "inverse") in out
    assert Triple("B", "P26", "A", "inverse") in out and len(out) == 4


# What DocRED's official scorer printed: thunlp/DocRED code/evaluation.py (commit 64622e60), run by hand with
# the bundled Re-DocRED sample as ref/dev_test.json, helpers/docred_submission.py's submission as
# res/result.json, its first 3 documents as train_annotated.json and the next 2 as train_distant.json.
OFFICIAL_DOCRED = {"re_f1": 0.660377358490566, "evidence_f1": 0.37260273972602737,
                   "ign_annotated_f1": 0.643073620406617, "ign_distant_f1": 0.6504003625925368}


def test_official_metrics_equal_docreds_evaluation_script():
    from helpers.docred_submission import submission
    from peft_apps.apps.autore.metrics.docred import official, train_facts

    docs = json.loads(SAMPLE.read_text())
    sub = submission(docs)
    m = official(docs, sub)
    assert m["re_f1"] == pytest.approx(OFFICIAL_DOCRED["re_f1"], abs=1e-9)
    assert m["evidence_f1"] == pytest.approx(OFFICIAL_DOCRED["evidence_f1"], abs=1e-9)
    # Ign F1: Re-DocRED / ATLOP's scorer adds 1e-5 to the precision's denominator, the original does not
    assert official(docs, sub, train_facts(docs[:3]))["ign_f1"] == pytest.approx(OFFICIAL_DOCRED["ign_annotated_f1"],
                                                                                 abs=1e-6)
    assert official(docs, sub, train_facts(docs[3:5]))["ign_f1"] == pytest.approx(OFFICIAL_DOCRED["ign_distant_f1"],
                                                                                  abs=1e-6)
