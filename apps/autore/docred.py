"""DocRED / Re-DocRED documents: loading with field checks, passages, and RHF stage records.

A document: {"title", "sents": [[token, ...], ...], "vertexSet": [[mention, ...], ...], "labels":
[{"r", "h", "t", "evidence"}, ...]} where a mention is {"name", "sent_id", "pos": [start, end], "type"}.
Test files have no "labels". The passage is the tokens joined by spaces, as AutoRE does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from peft_apps.core.errors import UserError
from peft_apps.core.resources import data_dir

STAGES = ("relation", "head", "facts")
SEP = " | "


@lru_cache(maxsize=1)
def relation_table() -> dict[str, tuple[str, str]]:
    """Relation id -> (name, description) from data/autore/relation_descriptions.tsv."""
    out = {}
    for line in data_dir("autore", "relation_descriptions.tsv").read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        rid, name, desc = line.split("\t")
        out[rid] = (name, desc)
    return out


def name_to_id() -> dict[str, str]:
    return {name.lower(): rid for rid, (name, _) in relation_table().items()}


def load_docs(path: str | Path, require_labels: bool = False) -> list[dict[str, Any]]:
    from peft_apps.core.io import read_text

    path = Path(path)
    text = read_text(path, "DocRED file")
    try:
        docs = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if isinstance(docs, dict):
        docs = [docs]
    if not isinstance(docs, list):
        raise UserError(f"{path}: expected a JSON list of documents")
    for i, d in enumerate(docs):
        validate_doc(d, i, path, require_labels)
    return docs


def validate_doc(d: Any, i: int, path: str | Path = "<input>", require_labels: bool = False) -> None:
    title = d.get("title", "") if isinstance(d, dict) else ""
    where = f"{path}: document {i} ({title!r})"
    if not isinstance(d, dict):
        raise UserError(f"{where}: expected an object")
    for key, kind in (("title", str), ("sents", list), ("vertexSet", list)):
        if key not in d:
            raise UserError(f"{where}: missing field {key!r}")
        if not isinstance(d[key], kind):
            raise UserError(f"{where}: field {key!r} must be {kind.__name__}")
    for si, s in enumerate(d["sents"]):
        if not isinstance(s, list) or not all(isinstance(t, str) for t in s):
            raise UserError(f"{where}: sents[{si}] must be a list of token strings")
    n_ent = len(d["vertexSet"])
    for ei, ent in enumerate(d["vertexSet"]):
        if not isinstance(ent, list) or not ent:
            raise UserError(f"{where}: vertexSet[{ei}] must be a non-empty list of mentions")
        for mi, m in enumerate(ent):
            for key in ("name", "sent_id", "pos"):
                if not isinstance(m, dict) or key not in m:
                    raise UserError(f"{where}: vertexSet[{ei}][{mi}] missing field {key!r}")
            if not 0 <= m["sent_id"] < len(d["sents"]):
                raise UserError(f"{where}: vertexSet[{ei}][{mi}].sent_id = {m['sent_id']} is outside sents "
                                f"({len(d['sents'])} sentences)")
    if "labels" not in d:
        if require_labels:
            raise UserError(f"{where}: missing field 'labels'")
        return
    if not isinstance(d["labels"], list):
        raise UserError(f"{where}: field 'labels' must be a list")
    rels = relation_table()
    for li, lab in enumerate(d["labels"]):
        for key in ("r", "h", "t"):
            if not isinstance(lab, dict) or key not in lab:
                raise UserError(f"{where}: labels[{li}] missing field {key!r}")
        for key in ("h", "t"):
            if not isinstance(lab[key], int) or not 0 <= lab[key] < n_ent:
                raise UserError(f"{where}: labels[{li}].{key} = {lab[key]!r} points outside vertexSet "
                                f"({n_ent} entities)")
        if lab["r"] not in rels:
            raise UserError(f"{where}: labels[{li}].r = {lab['r']!r} is not a DocRED relation id")


def passage(doc: dict[str, Any]) -> str:
    return " ".join(" ".join(s) for s in doc["sents"])


def mention_names(entity: list[dict[str, Any]]) -> list[str]:
    """Distinct mention names of an entity, in order of appearance in vertexSet."""
    return list(dict.fromkeys(m["name"] for m in entity))


def canonical(entity: list[dict[str, Any]]) -> str:
    return entity[0]["name"]


@dataclass
class StageRecords:
    relation: list[dict[str, Any]] = field(default_factory=list)
    head: list[dict[str, Any]] = field(default_factory=list)
    facts: list[dict[str, Any]] = field(default_factory=list)
    skipped_without_labels: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"relation": len(self.relation), "head": len(self.head), "facts": len(self.facts),
                "documents_without_labels": len(self.skipped_without_labels)}


def stage_examples(docs: list[dict[str, Any]]) -> StageRecords:
    """The three stages' examples (fields for the prompt templates + completion) from labelled documents.

    relation: one per document, the relation names in order of first label.
    head: one per (document, relation), the head entities' canonical names in order of first label.
    facts: one per (document, relation, head): `head | relation | tail` for every combination of the
    head's and tail's distinct mention names. Documents without labels are left out and listed.
    """
    rels = relation_table()
    out = StageRecords()
    for di, d in enumerate(docs):
        labels = d.get("labels") or []
        if not labels:
            out.skipped_without_labels.append(d.get("title", str(di)))
            continue
        text = passage(d)
        by_rel: dict[str, dict[int, list[int]]] = {}
        for lab in labels:
            by_rel.setdefault(lab["r"], {}).setdefault(lab["h"], [])
            if lab["t"] not in by_rel[lab["r"]][lab["h"]]:
                by_rel[lab["r"]][lab["h"]].append(lab["t"])
        doc_id = f"{di}"
        out.relation.append({"id": f"{doc_id}/relation", "doc": di, "passage": text,
                             "completion": "\n".join(rels[r][0] for r in by_rel)})
        for r, heads in by_rel.items():
            name, desc = rels[r]
            out.head.append({"id": f"{doc_id}/head/{r}", "doc": di, "passage": text, "relation": name,
                             "description": desc,
                             "completion": "\n".join(canonical(d["vertexSet"][h]) for h in heads)})
            for h, tails in heads.items():
                facts = [f"{hn}{SEP}{name}{SEP}{tn}" for t in tails
                         for hn in mention_names(d["vertexSet"][h]) for tn in mention_names(d["vertexSet"][t])]
                out.facts.append({"id": f"{doc_id}/facts/{r}/{h}", "doc": di, "passage": text, "relation": name,
                                  "description": desc, "head": canonical(d["vertexSet"][h]),
                                  "completion": "\n".join(dict.fromkeys(facts))})
    return out
