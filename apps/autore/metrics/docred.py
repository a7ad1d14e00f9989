"""Document-level RE metrics: AutoRE's name match and the official DocRED metrics (RE F1, Ign F1, evidence F1).

Name match (AutoRE): a predicted (head name, relation, tail name) is correct if it equals some name
variant of a gold triple (any mention name of the gold head and tail entities); each gold triple is
counted once, and further variants of an already matched gold triple are neither hits nor errors.

Official DocRED (the evaluation script of Yao et al. 2019): predictions are (title, h_idx, t_idx, r)
over vertexSet indices, de-duplicated; RE P = correct / predicted, R = correct / gold. Ign F1 leaves
out, from both the correct and the predicted counts, the correct facts whose (head name, tail name,
relation) appears in a given train file (with Re-DocRED's and ATLOP's 1e-5 in that precision's
denominator). Names compare without case and whitespace. Evidence P/R count sentence ids of correct
predictions.

Checked against the official script: `official()` equals thunlp/DocRED's code/evaluation.py (RE F1, evidence
F1 to 1e-9; Ign F1 to 1e-6, the 1e-5 above) on the bundled Re-DocRED sample with a submission that misses,
repeats, swaps and mislabels facts; the script's printed figures, run by hand, are kept in
tests/test_autore_data.py with how they were produced. The name match is AutoRE's definition as its
paper states it; it has not been run against the test code of AutoRE's repository (THUDM/AutoRE).

An `evaluate` module, kept in the app and loaded by path (a Hub metric cannot load offline):

    import evaluate
    m = evaluate.load("apps/autore/metrics/docred.py")
    m.compute(predictions=[[["Marie Curie", "P19", "Warsaw"]], ...],      # (head, relation id, tail) per doc
              references=[json.dumps(doc), ...],                           # the DocRED documents
              train_file="train_revised.json")                             # optional: Ign F1
    m.compute(predictions=[[]] * n, references=docs_json, submission=[{"title", "h_idx", "t_idx", "r"}, ...])
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Iterable

import datasets
import evaluate


def norm(name: str) -> str:
    """Names compare without case and whitespace: "People 's Party" (tokens) == "People's Party"."""
    return "".join(name.lower().split())


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def _prf(tp: int, n_pred: int, n_gold: int) -> dict[str, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    return {"precision": p, "recall": r, "f1": _f1(p, r), "tp": tp, "predicted": n_pred, "gold": n_gold}


def name_match(docs: list[dict[str, Any]], preds: dict[int, Iterable[tuple[str, str, str]]]) -> dict[str, Any]:
    """preds: document index -> (head name, relation id, tail name) triples."""
    tp = n_pred = n_gold = 0
    per_rel: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # tp, pred, gold
    for di, d in enumerate(docs):
        # a gold fact is its relation and the name variants of head and tail; two labels that agree on
        # all of these (entities with identical names) are one fact at the level of names
        gold = list(dict.fromkeys((lab["r"], frozenset(norm(m["name"]) for m in d["vertexSet"][lab["h"]]),
                                   frozenset(norm(m["name"]) for m in d["vertexSet"][lab["t"]]))
                                  for lab in d.get("labels", [])))
        n_gold += len(gold)
        for r, _, _ in gold:
            per_rel[r][2] += 1
        used: set[int] = set()
        for h, r, t in dict.fromkeys((norm(h), r, norm(t)) for h, r, t in preds.get(di, [])):
            hits = [gi for gi, (gr, hs, ts) in enumerate(gold) if gr == r and norm(h) in hs and norm(t) in ts]
            fresh = [gi for gi in hits if gi not in used]
            if hits and not fresh:
                continue  # another name variant of a gold triple already matched
            n_pred += 1
            per_rel[r][1] += 1
            if fresh:
                used.add(fresh[0])
                tp += 1
                per_rel[r][0] += 1
    out = _prf(tp, n_pred, n_gold)
    out["per_relation"] = {r: _prf(*v) for r, v in sorted(per_rel.items())}
    return out


def train_facts(train_docs: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    facts = set()
    for d in train_docs:
        for lab in d.get("labels", []):
            for n1 in d["vertexSet"][lab["h"]]:
                for n2 in d["vertexSet"][lab["t"]]:
                    facts.add((n1["name"], n2["name"], lab["r"]))
    return facts


def official(docs: list[dict[str, Any]], submission: list[dict[str, Any]],
             train: set[tuple[str, str, str]] | None = None) -> dict[str, Any]:
    """The official DocRED scorer on a submission list of {title, h_idx, t_idx, r, evidence?}."""
    by_title = {d["title"]: d for d in docs}
    std: dict[tuple[str, str, int, int], set[int]] = {}
    tot_evidences = 0
    for d in docs:
        for lab in d.get("labels", []):
            std[(d["title"], lab["r"], lab["h"], lab["t"])] = set(lab.get("evidence", []))
            tot_evidences += len(lab.get("evidence", []))
    tot = len(std)
    sub = sorted(submission, key=lambda x: (x["title"], x["h_idx"], x["t_idx"], x["r"]))
    uniq = [sub[0]] if sub else []
    for x in sub[1:]:
        p = uniq[-1]
        if (x["title"], x["h_idx"], x["t_idx"], x["r"]) != (p["title"], p["h_idx"], p["t_idx"], p["r"]):
            uniq.append(x)
    correct = correct_evidence = pred_evi = correct_in_train = 0
    has_evidence = any("evidence" in x for x in uniq)
    for x in uniq:
        key = (x["title"], x["r"], x["h_idx"], x["t_idx"])
        evi = set(x.get("evidence", []))
        pred_evi += len(evi)
        if key in std:
            correct += 1
            correct_evidence += len(std[key] & evi)
            if train is not None:
                d = by_title[x["title"]]
                if any((n1["name"], n2["name"], x["r"]) in train for n1 in d["vertexSet"][x["h_idx"]]
                       for n2 in d["vertexSet"][x["t_idx"]]):
                    correct_in_train += 1
    re_p = correct / len(uniq) if uniq else 0.0
    re_r = correct / tot if tot else 0.0
    out: dict[str, Any] = {"re_precision": re_p, "re_recall": re_r, "re_f1": _f1(re_p, re_r),
                           "predicted": len(uniq), "gold": tot, "correct": correct}
    if train is not None:
        p_ign = (correct - correct_in_train) / (len(uniq) - correct_in_train + 1e-5)
        out.update(ign_precision=p_ign, ign_f1=_f1(p_ign, re_r), correct_in_train=correct_in_train)
    if has_evidence:
        evi_p = correct_evidence / pred_evi if pred_evi else 0.0
        evi_r = correct_evidence / tot_evidences if tot_evidences else 0.0
        out.update(evidence_precision=evi_p, evidence_recall=evi_r, evidence_f1=_f1(evi_p, evi_r))
    return out


def names_to_submission(docs: list[dict[str, Any]], preds: dict[int, Iterable[tuple[str, str, str]]]
                        ) -> tuple[list[dict[str, Any]], int]:
    """Map predicted names to vertexSet entities by mention match (case-insensitive); returns the
    submission and how many triples could not be mapped (a name matching no mention).

    A name shared by several entities goes to the one whose first mention is that name, else to the
    first entity that has it as a mention."""
    sub, unmapped = [], 0
    for di, d in enumerate(docs):
        index: dict[str, int] = {}
        for ei, ent in enumerate(d["vertexSet"]):  # canonical (first-mention) names win
            index.setdefault(norm(ent[0]["name"]), ei)
        for ei, ent in enumerate(d["vertexSet"]):
            for m in ent:
                index.setdefault(norm(m["name"]), ei)
        for h, r, t in dict.fromkeys(preds.get(di, [])):
            hi, ti = index.get(norm(h)), index.get(norm(t))
            if hi is None or ti is None or hi == ti:
                unmapped += 1
                continue
            sub.append({"title": d["title"], "h_idx": hi, "t_idx": ti, "r": r})
    return sub, unmapped


def score_names(docs: list[dict[str, Any]], preds: dict[int, Iterable[tuple[str, str, str]]],
                train: set[tuple[str, str, str]] | None = None) -> dict[str, Any]:
    """Name-match P/R/F1 and, after mapping names to entities, the official metrics (prefixed docred_)."""
    nm = name_match(docs, preds)
    sub, unmapped = names_to_submission(docs, preds)
    off = official(docs, sub, train)
    per_rel = nm.pop("per_relation")
    return {"precision": nm["precision"], "recall": nm["recall"], "f1": nm["f1"], "tp": nm["tp"],
            "predicted": nm["predicted"], "gold": nm["gold"], **{f"docred_{k}": v for k, v in off.items()},
            "unmapped_triples": unmapped, "per_relation": per_rel}


class DocRED(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=__doc__,
            citation="Yao et al., DocRED: A Large-Scale Document-Level Relation Extraction Dataset (ACL 2019); "
                     "Xue et al., AutoRE (2024)",
            inputs_description="predictions: per document, [head name, relation id, tail name] triples; "
                               "references: per document, the DocRED document as a JSON string",
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Sequence(datasets.Value("string"))),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, train_file: str | None = None,
                 submission: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        docs = [json.loads(r) for r in references]
        train = None
        if train_file:
            with open(train_file, encoding="utf-8") as fh:
                train_docs = json.load(fh)
            train = train_facts(train_docs if isinstance(train_docs, list) else [train_docs])
        if submission is not None:
            return {f"docred_{k}": v for k, v in official(docs, submission, train).items()}
        return score_names(docs, {i: [tuple(t) for t in p] for i, p in enumerate(predictions)}, train)
