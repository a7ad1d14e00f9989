"""AutoRE: document-level relation extraction in three steps, Relation -> Head -> Facts.

    from peft_apps.apps.autore import AutoRE
    re = AutoRE.from_pretrained("Qwen/Qwen2.5-7B-Instruct", "runs/autore-qlora")          # one adapter
    re = AutoRE.from_pretrained(None, {"relation": "r/", "head": "h/", "facts": "f/"})   # three
    result = re.extract("Marie Curie was born in Warsaw. She ...")                         # or DocRED docs
    result.triples  # [{head, relation, relation_id, tail, head_mentions, tail_mentions, source}, ...]

The reference runs 1 + |relations| + |(relation, head)| sampled generate calls per document, one at
a time. Here each stage's calls of many documents run in shared batches over cached prompt prefixes
(the document's passage; a relation's name and description; a relation's facts instruction), each
computed once and read in place by the calls below it, rows leave a batch when they finish, and
greedy decoding speculates with prompt lookup (see `core/engine.py`). A prefix is the longest common
token prefix of the prompts under it, so prefix ids + suffix ids are exactly the whole prompt's ids
(checked per call; a call that does not start with its prefix runs on its own).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from peft_apps.core.data import render_prompt
from peft_apps.core.engine import Engine, GenerationOptions, PrefixTree
from peft_apps.core.engine.remote import open_engine
from peft_apps.core.errors import UserError
from peft_apps.core.prompts import render

from .docred import STAGES, passage, relation_table, validate_doc
from .parse import Passage, Triple, add_inverses, parse_facts, parse_heads, parse_relations


@dataclass
class DocResult:
    title: str
    triples: list[dict[str, Any]]
    stats: dict[str, int]
    raw: dict[str, Any] = field(default_factory=dict)  # stage outputs, for debugging and scoring

    def as_dict(self) -> dict[str, Any]:
        return {"title": self.title, "triples": self.triples, "stats": self.stats}

    def model_text(self) -> str:
        """The triples as `head | relation | tail` lines (the raw-output form `score` reads)."""
        return "\n".join(f"{t['head']} | {t['relation']} | {t['tail']}" for t in self.triples
                         if t["source"] == "model")


_NLP = None


def text_to_doc(text: str, title: str = "") -> dict[str, Any]:
    """Plain text -> a DocRED-like document (sentences and tokens by spaCy's blank English + sentencizer)."""
    global _NLP
    if _NLP is None:
        import spacy

        _NLP = spacy.blank("en")
        _NLP.add_pipe("sentencizer")
    doc = _NLP(text)
    sents = [[t.text for t in s if not t.is_space] for s in doc.sents]
    sents = [s for s in sents if s]
    offsets = [(s.start_char, s.end_char) for s in doc.sents if any(not t.is_space for t in s)]
    return {"title": title, "sents": sents, "vertexSet": [], "_text": text, "_sent_offsets": offsets}


def check_stage_adapters(adapters: Any) -> None:
    """Each folder a run of autore trained for the stages it is used for: one folder for all three stages,
    or {relation, head, facts: folder}."""
    if adapters is None:
        raise UserError("AutoRE needs an adapter folder (one for all stages) or {relation, head, facts}")
    from peft_apps.core.config import run_recipe

    if not isinstance(adapters, (str, Path)):
        missing = [s for s in STAGES if s not in adapters]
        if missing or set(adapters) - set(STAGES):
            raise UserError(f"adapters must name exactly the stages {', '.join(STAGES)}; got {', '.join(adapters)}")

    folders = {"": adapters} if isinstance(adapters, (str, Path)) else dict(adapters)
    for key, d in folders.items():  # each a run of autore, trained for the stages it is used for
        learnt = run_recipe(d, "autore").task.get("stages", list(STAGES))
        want = list(STAGES) if not key else [key]
        lacking = [s for s in want if s in STAGES and s not in learnt]
        if lacking:
            raise UserError(f"adapter {d} was trained for the {', '.join(learnt)} stage(s); extraction needs "
                            f"{', '.join(lacking)} from it",
                            hint="one adapter for all stages (`peft-apps train autore`, recipe qlora), or one per "
                                 "stage: --adapters relation=DIR,head=DIR,facts=DIR (recipes qlora-relation/"
                                 "-head/-facts)")


class AutoRE:
    def __init__(self, engine: Engine, stage_adapter: dict[str, str | None], *, max_new_tokens: int = 160,
                 batch_size: int = 128, do_sample: bool = False, inverse: bool = True, doc_batch: int = 16,
                 lookahead: int = 10):
        self.engine = engine
        self.stage_adapter = stage_adapter
        self.options = GenerationOptions(max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=do_sample,
                                         lookahead=lookahead)
        self.inverse = inverse
        self.doc_batch = max(1, doc_batch)
        self.context = engine.context_length

    @classmethod
    def from_pretrained(cls, base: str | None = None, adapters: str | Path | dict[str, str | Path] | None = None,
                        endpoint: Any = None, model: str | None = None, api_key_env: str | None = None,
                        **kw: Any) -> "AutoRE":
        """`adapters`: one run folder for all stages, or {relation, head, facts: folder}. `endpoint`: a server's
        URL to generate on instead of loading the model here (`model`: its name for the adapter, default the
        run folder's name; `api_key_env`: the variable holding the API key)."""
        check_stage_adapters(adapters)
        remote = dict(endpoint=endpoint, model=model, api_key_env=api_key_env)
        if isinstance(adapters, (str, Path)):
            engine = open_engine(base, {"rhf": adapters}, **remote)
            return cls(engine, {s: "rhf" for s in STAGES}, **kw)
        engine = open_engine(base, {s: adapters[s] for s in STAGES}, **remote)
        return cls(engine, {s: s for s in STAGES}, **kw)

    # ---- prompts -------------------------------------------------------------------------------
    def _ids(self, stage: str, **fields: Any) -> list[int]:
        text = render_prompt(self.engine.tokenizer, [{"role": "user", "content": render("autore", stage, **fields)}])
        return self.engine.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _windows(self, doc: dict[str, Any]) -> list[dict[str, Any]]:
        """Split a document whose prompts would not fit the context into sentence windows that do.

        Each sentence is tokenized once and windows are filled by adding up their lengths (the 96-token
        margin covers the few tokens a join can add), rather than re-tokenizing every trial window.
        """
        budget = self.context - self.options.max_new_tokens - 96
        if len(self._ids("facts", passage=passage(doc), relation="x", description="x", head="x")) <= budget:
            return [doc]
        tok = self.engine.tokenizer
        overhead = len(self._ids("facts", passage="", relation="x", description="x", head="x"))
        windows, cur, used = [], [], overhead
        for i, s in enumerate(doc["sents"]):
            n = len(tok(" " + " ".join(s), add_special_tokens=False)["input_ids"])
            if cur and used + n > budget:
                windows.append(cur)
                cur, used = [], overhead
            cur.append(i)
            used += n
        windows.append(cur)
        return [{**doc, "sents": [doc["sents"][j] for j in w], "_window": w} for w in windows]

    # ---- extraction ----------------------------------------------------------------------------
    def extract(self, inputs: str | dict[str, Any] | Sequence[str | dict[str, Any]], progress=None,
                teacher_forced: bool = False) -> DocResult | list[DocResult]:
        """Triples for a text, a DocRED document, or a list of them (then a list of results).

        Several documents are processed `doc_batch` at a time: each stage's calls of all of them run in
        shared batches (every row with its own document's cached prefix).

        `teacher_forced` (labelled DocRED documents only; for benchmarks and tests): every call is still
        generated, but the relations and heads that drive the next stage come from the gold labels and
        each call decodes exactly as many tokens as its gold answer has, so two implementations can be
        compared on the same stage structure with any model, trained or not.
        """
        single = isinstance(inputs, (str, dict))
        items = [inputs] if single else list(inputs)
        docs = []
        for i, item in enumerate(items):
            if isinstance(item, dict):
                validate_doc(item, i)
                docs.append(item)
            elif isinstance(item, str):
                docs.append(text_to_doc(item))
            else:
                raise UserError(f"input {i}: expected text or a DocRED document, got {type(item).__name__}")
        results: list[DocResult] = []
        for start in range(0, len(docs), self.doc_batch):
            results.extend(self._extract_many(docs[start:start + self.doc_batch], teacher_forced))
            if progress is not None:
                progress(len(results), len(docs))
        return results[0] if single else results

    def _extract_many(self, docs: list[dict[str, Any]], forced: bool) -> list[DocResult]:
        units: list[tuple[int, dict[str, Any]]] = []  # (document, window)
        stats = [Counter() for _ in docs]
        for di, doc in enumerate(docs):
            if not doc["sents"]:
                continue
            windows = self._windows(doc)
            if len(windows) > 1:
                stats[di]["windows"] = len(windows)
            units.extend((di, w) for w in windows)
        found, raws = self._rhf_many([w for _, w in units], [stats[di] for di, _ in units],
                                     [teacher(w, self.engine.tokenizer) if forced else None for _, w in units])
        per_doc: list[list[Triple]] = [[] for _ in docs]
        raw: list[dict[str, Any]] = [{"windows": []} for _ in docs]
        for (di, _), triples, r in zip(units, found, raws):
            per_doc[di].extend(t for t in triples if t not in per_doc[di])
            raw[di]["windows"].append(r)
        out = []
        for di, doc in enumerate(docs):
            triples = add_inverses(per_doc[di]) if self.inverse else per_doc[di]
            if doc["sents"]:
                stats[di]["triples"] = len(triples)
            out.append(DocResult(doc.get("title", ""), [self._describe(doc, t) for t in triples], dict(stats[di]),
                                 raw[di]))
        return out

    def _rhf_many(self, docs: list[dict[str, Any]], stats: list[Counter], forced: list[dict[str, Any] | None]
                  ) -> tuple[list[list[Triple]], list[dict[str, Any]]]:
        """The three stages for several documents (or windows) at once.

        Prompts share cached prefixes as a tree: the document's (passage), then, where the head and facts
        stages share an adapter, the relation's (its name and description, common to its head call and
        all its facts calls), then the facts group's (the instruction before the subject). Each level is
        computed once, in batched forward passes, and read in place by every call below it. A prefix is
        the longest common token prefix of the prompts under it, so prefix ids + suffix ids are exactly a
        prompt's ids (checked per call; a call that does not start with its prefix falls back to the
        document's prefix, else runs whole).
        """
        table = relation_table()
        n = len(docs)
        texts = [passage(d) for d in docs]
        psgs = [Passage(t) for t in texts]
        relation_ids = [self._ids("relation", passage=t) for t in texts]
        # the document's prefix: what its relation and head prompts share (known before any head call exists)
        doc_ids = [os.path.commonprefix([relation_ids[u], self._ids("head", passage=t, relation="x", description="x")])
                   for u, t in enumerate(texts)]
        tree = PrefixTree(self.engine)

        def run(stage: str, calls: list[tuple[tuple, list[int]]], budgets: list[int] | None) -> list[str]:
            """Generate `calls` (their deepest prefix key, whose first item is the document; prompt ids) over
            that prefix if cached, else the document's under this stage's adapter."""
            adapter = self.stage_adapter[stage]
            tree.roots({("doc", key[0], adapter): doc_ids[key[0]] for key, _ in calls}, adapter)
            outs = tree.generate([((key, ("doc", key[0], adapter)), ids) for key, ids in calls], adapter,
                                 self.options, budgets)
            for i in tree.whole_calls:
                stats[calls[i][0][0]]["calls_without_shared_prefix"] += 1
            for key, _ in calls:
                stats[key[0]][f"{stage}_calls"] += 1
            return outs

        forcing = bool(forced) and forced[0] is not None
        relation_out = run("relation", [((u, "relation"), relation_ids[u]) for u in range(n)],
                           [forced[u]["budget"]["relation"] for u in range(n)] if forcing else None)
        rels = [forced[u]["relations"] if forced[u] else parse_relations(relation_out[u], stats[u]) for u in range(n)]

        head_keys = [(u, r) for u in range(n) for r in rels[u]]
        head_ids = [self._ids("head", passage=texts[u], relation=table[r][0], description=table[r][1])
                    for u, r in head_keys]
        head_adapter, facts_adapter = self.stage_adapter["head"], self.stage_adapter["facts"]
        if head_adapter == facts_adapter:  # one cache serves both stages: the relation's prefix, shared by
            # its head call and all its facts calls
            tree.roots({("doc", u, head_adapter): doc_ids[u] for u, _ in head_keys}, head_adapter)
            tree.extend([((u, r, "relation prefix"), ("doc", u, head_adapter), os.path.commonprefix([hi, self._ids(
                "facts", passage=texts[u], relation=table[r][0], description=table[r][1], head="x")]))
                         for (u, r), hi in zip(head_keys, head_ids)], head_adapter)
        head_out = run("head", [((u, r, "relation prefix"), hi) for (u, r), hi in zip(head_keys, head_ids)],
                       [forced[u]["budget"]["head"][r] for u, r in head_keys] if forcing else None)
        heads: dict[tuple[int, str], list[str]] = {}
        for (u, r), out in zip(head_keys, head_out):
            heads[(u, r)] = forced[u]["heads"][r] if forced[u] else parse_heads(out, psgs[u], stats[u])

        fact_keys = [(u, r, h) for u, r in head_keys for h in heads[(u, r)]]
        fact_ids = [self._ids("facts", passage=texts[u], relation=table[r][0], description=table[r][1], head=h)
                    for u, r, h in fact_keys]
        members: dict[tuple[int, str], list[int]] = {}
        for i, (u, r, _) in enumerate(fact_keys):
            members.setdefault((u, r), []).append(i)
        tree.roots({("doc", u, facts_adapter): doc_ids[u] for u, _, _ in fact_keys}, facts_adapter)
        # a relation's facts calls share the longest common prefix of their prompts (the instruction
        # before the subject), built on the relation's prefix where there is one
        tree.share({(u, r, "facts group"): ((u, r, "relation prefix") if (u, r, "relation prefix") in tree
                                            else ("doc", u, facts_adapter), [fact_ids[i] for i in idx])
                    for (u, r), idx in members.items()}, facts_adapter)
        fact_out = run("facts", [((u, r, "facts group") if (u, r, "facts group") in tree else (u, r, "relation prefix"),
                                  fi) for (u, r, _), fi in zip(fact_keys, fact_ids)],
                       [forced[u]["budget"]["facts"][(r, h)] for u, r, h in fact_keys] if forcing else None)
        triples: list[list[Triple]] = [[] for _ in range(n)]
        for (u, r, _h), out in zip(fact_keys, fact_out):
            for t in parse_facts(out, r, psgs[u], stats[u]):
                if t not in triples[u]:
                    triples[u].append(t)
        raws = [{"relation": relation_out[u], "head": [o for (v, _), o in zip(head_keys, head_out) if v == u],
                 "facts": [o for (v, _, _), o in zip(fact_keys, fact_out) if v == u]} for u in range(n)]
        return triples, raws

    def extract_sequential(self, item: str | dict[str, Any], teacher_forced: bool = False) -> DocResult:
        """The reference procedure, one generate call at a time (no batching, no shared prefix)."""
        doc = text_to_doc(item) if isinstance(item, str) else item
        stats: Counter = Counter()
        text = passage(doc)
        psg = Passage(text)
        table = relation_table()
        eng = self.engine
        opts = GenerationOptions(max_new_tokens=self.options.max_new_tokens, batch_size=1,
                                 do_sample=self.options.do_sample)

        f = teacher(doc, eng.tokenizer) if teacher_forced else {}
        raw: dict[str, Any] = {"relation": "", "head": [], "facts": []}

        def one(stage: str, budget: int | None = None, **fields: Any) -> str:
            o = opts if budget is None else GenerationOptions(**{**opts.__dict__, "max_new_tokens": budget})
            return eng.generate_ids([self._ids(stage, **fields)], adapter=self.stage_adapter[stage], options=o)[0]

        raw["relation"] = one("relation", f["budget"]["relation"] if f else None, passage=text)
        rels = f["relations"] if f else parse_relations(raw["relation"], stats)
        triples: list[Triple] = []
        for r in rels:
            name, desc = table[r]
            hout = one("head", f["budget"]["head"][r] if f else None, passage=text, relation=name, description=desc)
            raw["head"].append(hout)
            heads = f["heads"][r] if f else parse_heads(hout, psg, stats)
            for h in heads:
                out = one("facts", f["budget"]["facts"][(r, h)] if f else None, passage=text, relation=name,
                          description=desc, head=h)
                raw["facts"].append(out)
                for t in parse_facts(out, r, psg, stats):
                    if t not in triples:
                        triples.append(t)
        if self.inverse:
            triples = add_inverses(triples)
        return DocResult(doc.get("title", ""), [self._describe(doc, t) for t in triples], dict(stats),
                         {"windows": [raw]})

    # ---- output ----------------------------------------------------------------------------------
    def _describe(self, doc: dict[str, Any], t: Triple) -> dict[str, Any]:
        return {"head": t.head, "relation": t.relation, "relation_id": t.relation_id, "tail": t.tail,
                "head_mentions": _mentions(doc, t.head), "tail_mentions": _mentions(doc, t.tail),
                "source": t.source}


def teacher(doc: dict[str, Any], tokenizer) -> dict[str, Any]:
    """Gold relations, heads and per-call answer lengths (in tokens) for teacher-forced runs."""
    from .docred import stage_examples

    if not doc.get("labels"):
        raise UserError(f"teacher forcing needs labelled documents; {doc.get('title', '')!r} has none")
    tok = tokenizer
    ex = stage_examples([doc])
    n = (lambda s: len(tok(s, add_special_tokens=False)["input_ids"]) + 1)
    names = {v[0]: k for k, v in relation_table().items()}
    rels = [names[x] for x in ex.relation[0]["completion"].split("\n")]
    heads = {names[h["relation"]]: h["completion"].split("\n") for h in ex.head}
    return {"relations": rels, "heads": heads,
            "budget": {"relation": n(ex.relation[0]["completion"]),
                       "head": {names[h["relation"]]: n(h["completion"]) for h in ex.head},
                       "facts": {(names[x["relation"]], x["head"]): n(x["completion"]) for x in ex.facts}}}


def _mentions(doc: dict[str, Any], name: str) -> list[dict[str, int]]:
    """Character spans and sentence ids of `name` in the original text (plain text) or passage (DocRED)."""
    text = doc.get("_text")
    if text is None:
        text = passage(doc)
        offsets, pos = [], 0
        for s in doc["sents"]:
            seg = " ".join(s)
            offsets.append((pos, pos + len(seg)))
            pos += len(seg) + 1
    else:
        offsets = doc["_sent_offsets"]
    out, start = [], 0
    low, needle = text.lower(), name.lower()
    while needle:
        i = low.find(needle, start)
        if i == -1:
            break
        sid = next((k for k, (a, b) in enumerate(offsets) if a <= i < b), None)
        out.append({"start": i, "end": i + len(name), "sent_id": sid})
        start = i + 1
    return out

