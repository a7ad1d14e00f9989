"""AutoRE: document-level relation extraction in three steps, Relation -> Head -> Facts.

    from peft_apps.apps.autore import AutoRE
    re = AutoRE.from_pretrained("Qwen/Qwen2.5-7B-Instruct", "runs/autore-qlora")          # one adapter
    re = AutoRE.from_pretrained(None, {"relation": "r/", "head": "h/", "facts": "f/"})   # three
    result = re.extract("Marie Curie was born in Warsaw. She ...")                         # or DocRED docs
    result.triples  # [{head, relation, relation_id, tail, head_mentions, tail_mentions, source}, ...]

The reference runs 1 + |relations| + |(relation, head)| sampled generate calls per document, one at
a time. Here each stage's calls for a document run as batches that share the document's prompt
prefix: its KV cache is computed once per adapter and reused by every head and facts call, rows leave
a batch when they finish, and decoding is greedy by default. The prefix is the longest common token
prefix of the document's prompts, so prefix ids + suffix ids are exactly the whole prompt's ids
(checked per call; a call that does not start with the prefix runs on its own).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from peft_apps.core.data import render_prompt
from peft_apps.core.engine import Engine, GenerationOptions
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


class AutoRE:
    def __init__(self, engine: Engine, stage_adapter: dict[str, str | None], *, max_new_tokens: int = 160,
                 batch_size: int = 16, do_sample: bool = False, inverse: bool = True):
        self.engine = engine
        self.stage_adapter = stage_adapter
        self.options = GenerationOptions(max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=do_sample)
        self.inverse = inverse
        self.context = int(getattr(engine.model.config, "max_position_embeddings", 4096) or 4096)

    @classmethod
    def from_pretrained(cls, base: str | None = None, adapters: str | Path | dict[str, str | Path] | None = None,
                        **kw: Any) -> "AutoRE":
        if adapters is None:
            raise UserError("AutoRE needs an adapter folder (one for all stages) or {relation, head, facts}")
        if isinstance(adapters, (str, Path)):
            engine = Engine.from_pretrained(base, {"rhf": adapters})
            return cls(engine, {s: "rhf" for s in STAGES}, **kw)
        missing = [s for s in STAGES if s not in adapters]
        if missing or set(adapters) - set(STAGES):
            raise UserError(f"adapters must name exactly the stages {', '.join(STAGES)}; got {', '.join(adapters)}")
        engine = Engine.from_pretrained(base, {s: adapters[s] for s in STAGES})
        return cls(engine, {s: s for s in STAGES}, **kw)

    # ---- prompts -------------------------------------------------------------------------------
    def _ids(self, stage: str, **fields: Any) -> list[int]:
        text = render_prompt(self.engine.tokenizer, [{"role": "user", "content": render("autore", stage, **fields)}])
        return self.engine.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _windows(self, doc: dict[str, Any]) -> list[dict[str, Any]]:
        """Split a document whose prompts would not fit the context into sentence windows that do."""
        budget = self.context - self.options.max_new_tokens - 96
        if len(self._ids("facts", passage=passage(doc), relation="x", description="x", head="x")) <= budget:
            return [doc]
        windows, cur = [], []
        for i, s in enumerate(doc["sents"]):
            trial = {**doc, "sents": [doc["sents"][j] for j in cur + [i]]}
            if cur and len(self._ids("facts", passage=passage(trial), relation="x", description="x",
                                     head="x")) > budget:
                windows.append(cur)
                cur = []
            cur.append(i)
        windows.append(cur)
        return [{**doc, "sents": [doc["sents"][j] for j in w], "_window": w} for w in windows]

    # ---- extraction ----------------------------------------------------------------------------
    def extract(self, inputs: str | dict[str, Any] | Sequence[str | dict[str, Any]], progress=None
                ) -> DocResult | list[DocResult]:
        """Triples for a text, a DocRED document, or a list of them (then a list of results)."""
        single = isinstance(inputs, (str, dict))
        items = [inputs] if single else list(inputs)
        results = []
        for i, item in enumerate(items):
            results.append(self._extract_one(item, i))
            if progress is not None:
                progress(i + 1, len(items))
        return results[0] if single else results

    def _extract_one(self, item: str | dict[str, Any], index: int) -> DocResult:
        doc = text_to_doc(item) if isinstance(item, str) else item
        if isinstance(item, dict):
            validate_doc(item, index)
        stats: Counter = Counter()
        if not doc["sents"]:
            return DocResult(doc.get("title", ""), [], dict(stats))
        windows = self._windows(doc)
        if len(windows) > 1:
            stats["windows"] = len(windows)
        triples: list[Triple] = []
        raw: dict[str, Any] = {"windows": []}
        for w in windows:
            t, r = self._rhf(w, stats)
            raw["windows"].append(r)
            triples.extend(x for x in t if x not in triples)
        if self.inverse:
            triples = add_inverses(triples)
        stats["triples"] = len(triples)
        return DocResult(doc.get("title", ""), [self._describe(doc, t) for t in triples], dict(stats), raw)

    def _rhf(self, doc: dict[str, Any], stats: Counter) -> tuple[list[Triple], dict[str, Any]]:
        text = passage(doc)
        psg = Passage(text)
        table = relation_table()
        eng, opts = self.engine, self.options
        ids_rel = self._ids("relation", passage=text)
        probe = self._ids("head", passage=text, relation="x", description="x")
        prefix = os.path.commonprefix([ids_rel, probe])
        caches: dict[str | None, Any] = {}

        def run(stage: str, calls: list[list[int]]) -> list[str]:
            adapter = self.stage_adapter[stage]
            shared = [i for i, c in enumerate(calls) if c[:len(prefix)] == prefix and len(c) > len(prefix)]
            outs = [""] * len(calls)
            if shared:
                if adapter not in caches:
                    caches[adapter] = eng.encode_prefix(prefix, adapter)
                texts = eng.generate_shared_prefix(prefix, [calls[i][len(prefix):] for i in shared], adapter,
                                                   options=opts, prefix_cache=caches[adapter])
                for i, t in zip(shared, texts):
                    outs[i] = t
            alone = [i for i in range(len(calls)) if i not in set(shared)]
            if alone:  # the prefix check failed for these: run them whole
                stats["calls_without_shared_prefix"] += len(alone)
                texts = eng.generate_ids([calls[i] for i in alone], adapter=adapter, options=opts)
                for i, t in zip(alone, texts):
                    outs[i] = t
            stats[f"{stage}_calls"] += len(calls)
            return outs

        rel_out = run("relation", [ids_rel])[0]
        rels = parse_relations(rel_out, stats)
        head_calls = [self._ids("head", passage=text, relation=table[r][0], description=table[r][1]) for r in rels]
        head_out = run("head", head_calls) if head_calls else []
        pairs = [(r, h) for r, out in zip(rels, head_out) for h in parse_heads(out, psg, stats)]
        fact_calls = [self._ids("facts", passage=text, relation=table[r][0], description=table[r][1], head=h)
                      for r, h in pairs]
        fact_out = run("facts", fact_calls) if fact_calls else []
        triples: list[Triple] = []
        for (r, _h), out in zip(pairs, fact_out):
            for t in parse_facts(out, r, psg, stats):
                if t not in triples:
                    triples.append(t)
        return triples, {"relation": rel_out, "head": head_out, "facts": fact_out}

    def extract_sequential(self, item: str | dict[str, Any]) -> DocResult:
        """The reference procedure, one generate call at a time (no batching, no shared prefix)."""
        doc = text_to_doc(item) if isinstance(item, str) else item
        stats: Counter = Counter()
        text = passage(doc)
        psg = Passage(text)
        table = relation_table()
        eng = self.engine
        opts = GenerationOptions(max_new_tokens=self.options.max_new_tokens, batch_size=1,
                                 do_sample=self.options.do_sample)

        def one(stage: str, **fields: Any) -> str:
            return eng.generate_ids([self._ids(stage, **fields)], adapter=self.stage_adapter[stage], options=opts)[0]

        rels = parse_relations(one("relation", passage=text), stats)
        triples: list[Triple] = []
        for r in rels:
            name, desc = table[r]
            for h in parse_heads(one("head", passage=text, relation=name, description=desc), psg, stats):
                out = one("facts", passage=text, relation=name, description=desc, head=h)
                for t in parse_facts(out, r, psg, stats):
                    if t not in triples:
                        triples.append(t)
        if self.inverse:
            triples = add_inverses(triples)
        return DocResult(doc.get("title", ""), [self._describe(doc, t) for t in triples], dict(stats))

    # ---- output ----------------------------------------------------------------------------------
    def _describe(self, doc: dict[str, Any], t: Triple) -> dict[str, Any]:
        return {"head": t.head, "relation": t.relation, "relation_id": t.relation_id, "tail": t.tail,
                "head_mentions": _mentions(doc, t.head), "tail_mentions": _mentions(doc, t.tail),
                "source": t.source}


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


def results_to_jsonl(results: Iterable[DocResult]) -> list[dict[str, Any]]:
    return [r.as_dict() for r in results]
