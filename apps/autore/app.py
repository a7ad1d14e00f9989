"""The autore app's declarations: DocRED documents as examples, RHF stage records to train on, the
pipeline that answers a document in three stages, and the DocRED metric (`metrics/docred.py`)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from peft_apps.core.config import Recipe
from peft_apps.core.data import Record, write_jsonl
from peft_apps.core.errors import UserError
from peft_apps.core.io import atomic_write
from peft_apps.core.prompts import render
from peft_apps.core.registry import App

from .docred import SEP, STAGES, load_docs, passage, relation_table, stage_examples

Stage = Literal["relation", "head", "facts"]


class AutoRETask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stages: list[Stage] = list(STAGES)  # which stages this adapter learns (one adapter: all three)
    inverse: bool = True  # add inverse triples (at inference and when parsing model text)
    train_file: str | None = None  # the DocRED train file, for Ign F1 in `eval` and `score`


def _records(examples: list[dict[str, Any]], stage: str, system: str | None) -> list[Record]:
    fields = {"relation": ("passage",), "head": ("passage", "relation", "description"),
              "facts": ("passage", "relation", "description", "head")}[stage]
    return [Record.simple(ex["id"], render("autore", stage, where=ex["id"], **{k: ex[k] for k in fields}),
                          ex["completion"], system=system, stage=stage) for ex in examples]


def _doc_ids(docs: list[dict[str, Any]]) -> list[str]:
    """A document's id is its title, or its position where titles are missing or repeated."""
    titles = Counter(d.get("title") for d in docs)
    return [d["title"] if d.get("title") and titles[d["title"]] == 1 else str(i) for i, d in enumerate(docs)]


def _gold_text(doc: dict[str, Any]) -> str:
    table = relation_table()
    return "\n".join(dict.fromkeys(f"{doc['vertexSet'][lab['h']][0]['name']}{SEP}{table[lab['r']][0]}{SEP}"
                                   f"{doc['vertexSet'][lab['t']][0]['name']}" for lab in doc.get("labels", [])))


def _train_file(task: AutoRETask) -> str | None:
    """The DocRED train file Ign F1 leaves out (task.train_file, `bundled:` allowed), or None."""
    from peft_apps.core.resources import bundled_or_path

    return str(bundled_or_path(task.train_file)) if task.train_file else None


def doc_examples(docs: list[dict[str, Any]]) -> list[Record]:
    """Documents as examples: the gold triples as text, the document itself in `meta["doc"]`."""
    return [Record(rid, [], _gold_text(d), {"doc": d}) for rid, d in zip(_doc_ids(docs), docs)]


class ExtractRequest(BaseModel):
    """`POST /v1/apps/autore/extract`: a text (or a DocRED document) in, its triples out."""
    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    document: dict[str, Any] | None = None
    title: str = ""
    model: str | None = None  # the served autore run (one adapter for all stages); default: the only one
    adapters: dict[str, str] | None = None  # or one served run per stage: {relation, head, facts}
    inverse: bool = True


@dataclass
class AutoREApp(App):
    def read(self, path: Path, recipe: Recipe, labelled: bool = True, prompts: bool = True) -> list[Record]:
        return doc_examples(load_docs(path, require_labels=labelled))

    def train_records(self, examples: list[Record], recipe: Recipe) -> list[Record]:
        task = self.task(recipe)
        ex = stage_examples([e.meta["doc"] for e in examples])
        out: list[Record] = []
        for stage in task.stages:
            out.extend(_records(getattr(ex, stage), stage, recipe.data.system_prompt))
        return out

    def inputs(self, items: list[str], recipe: Recipe) -> list[Record]:
        """Text files, DocRED .json files, folders of them, or '-' (stdin): see `inputs.read_inputs`."""
        from .inputs import read_inputs
        from .pipeline import text_to_doc

        out = []
        for name, item in read_inputs(items):
            doc = item if isinstance(item, dict) else text_to_doc(item, title=name)
            out.append(Record(name, [], "", {"doc": doc}))
        return out

    def from_text(self, text: str, id: str, recipe: Recipe) -> Record:
        from .pipeline import text_to_doc

        return Record(id, [], "", {"doc": text_to_doc(text)})

    def convert(self, source: Path, out: Path, **options: Any) -> dict[str, Any]:
        if out.exists() and not out.is_dir():
            raise UserError(f"{out} is a file; `convert autore` writes a folder (relation.jsonl, head.jsonl, "
                            "facts.jsonl, report.json)")
        docs = load_docs(source)
        ex = stage_examples(docs)
        out.mkdir(parents=True, exist_ok=True)
        files = {}
        for stage in STAGES:
            recs = _records(getattr(ex, stage), stage, None)
            files[stage] = str(out / f"{stage}.jsonl")
            write_jsonl(out / f"{stage}.jsonl", ({"id": r.id, "stage": stage, "prompt": r.prompt[-1]["content"],
                                                  "completion": r.completion} for r in recs))
        report = {"source": str(source), "documents": len(docs), "labels": sum(len(d.get("labels", [])) for d in docs),
                  "records": ex.counts(), "documents_without_labels_titles": ex.skipped_without_labels[:20],
                  "files": files}
        atomic_write(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False))
        return report

    # ---- inference: three stages per document, so the app generates itself ---------------------------
    def pipeline(self, engine, recipe: Recipe):
        from .pipeline import AutoRE

        task = self.task(recipe)
        adapter = engine.adapters[0] if engine.adapters else None
        return AutoRE(engine, {s: adapter for s in STAGES}, inverse=task.inverse,
                      max_new_tokens=recipe.eval.max_new_tokens, batch_size=recipe.eval.batch_size,
                      do_sample=recipe.eval.do_sample)

    def serve_request(self):
        return ExtractRequest

    def serve(self, engine, runs: dict[str, Path], request: ExtractRequest) -> dict[str, Any]:
        """The triples of one text or document, as `autore extract --format jsonl` writes them (less the id)."""
        from peft_apps.core.config import load_recipe

        from .pipeline import AutoRE, check_stage_adapters, text_to_doc

        if (request.text is None) == (request.document is None):
            raise UserError('give "text" or "document" (a DocRED document), one of them')
        if request.adapters is not None:
            unknown = [n for n in request.adapters.values() if n not in runs]
            if unknown:
                raise UserError(f"adapters: {', '.join(unknown)} is no served autore run; served: {', '.join(runs)}")
            check_stage_adapters({s: runs[n] for s, n in request.adapters.items()})
            stage_adapter = dict(request.adapters)
        else:
            name = self.served_run(runs, request.model)
            check_stage_adapters(runs[name])
            stage_adapter = {s: name for s in STAGES}
        recipe = load_recipe(runs[next(iter(stage_adapter.values()))] / "recipe.yaml")
        pipe = AutoRE(engine(sorted(set(stage_adapter.values()))), stage_adapter, inverse=request.inverse,
                      max_new_tokens=recipe.eval.max_new_tokens, batch_size=recipe.eval.batch_size,
                      do_sample=recipe.eval.do_sample)
        doc = request.document if request.document is not None else text_to_doc(request.text, request.title)
        r = pipe.extract(doc)
        return {"output": r.model_text(), **r.as_dict()}

    def generate(self, pipeline, examples: list[Record], recipe: Recipe) -> list[dict[str, Any]]:
        results = pipeline.extract([e.meta["doc"] for e in examples])
        return [{"output": r.model_text(), "stats": r.stats} for r in results]

    def parse(self, output: str, example: Record, task: AutoRETask, stats: Counter) -> list[list[str]]:
        """`head | relation | tail` lines -> [head, relation id, tail], names repaired against the passage,
        what cannot be used dropped and counted; inverse triples added when `task.inverse`."""
        from .parse import Passage, add_inverses, parse_triple_lines

        triples = parse_triple_lines(output, Passage(passage(example.meta["doc"])), stats)
        if task is not None and task.inverse:
            triples = add_inverses(triples)
        return [[t.head, t.relation_id, t.tail] for t in triples]

    def metrics(self, examples: list[Record], parsed: list[Any], task: AutoRETask) -> dict[str, Any]:
        return self.load_metric().compute(predictions=parsed,
                                          references=[json.dumps(e.meta["doc"]) for e in examples],
                                          train_file=_train_file(task))

    def score(self, gold: Path, pred: Path, recipe: Recipe, only_predicted: bool = False,
              by: str = "auto") -> dict[str, Any]:
        """PRED: JSONL {id, output} of raw `head | relation | tail` text (the core's rule), or the official
        DocRED submission, a JSON list [{title, h_idx, t_idx, r, evidence?}]."""
        from peft_apps.core.io import read_text

        text = read_text(pred, "prediction file")
        if text.lstrip()[:1] != "[":
            return super().score(gold, pred, recipe, only_predicted, by)
        docs = load_docs(gold, require_labels=True)
        try:
            sub = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{pred}: not valid JSON ({e.msg} at line {e.lineno})") from None
        titles = {d["title"]: d for d in docs}
        for i, x in enumerate(sub):
            for k in ("title", "h_idx", "t_idx", "r"):
                if not isinstance(x, dict) or k not in x:
                    raise UserError(f"{pred}: submission item {i} missing field {k!r}")
            if x["title"] not in titles:
                raise UserError(f"{pred}: submission item {i}: title {x['title']!r} is not in {gold}")
            n = len(titles[x["title"]]["vertexSet"])
            for k in ("h_idx", "t_idx"):
                if not isinstance(x[k], int) or not 0 <= x[k] < n:
                    raise UserError(f"{pred}: submission item {i}: {k} = {x[k]!r} outside vertexSet ({n} entities)")
        return self.load_metric().compute(predictions=[[]] * len(docs), references=[json.dumps(d) for d in docs],
                                          submission=sub, train_file=_train_file(self.task(recipe)))

    def demo_inputs(self, recipe: Recipe, work_dir: Path) -> list[str]:
        from peft_apps.core.loop import examples

        docs = [e.meta["doc"] for e in examples(self, recipe, "eval")[:2]]
        path = work_dir / "demo_docs.json"
        path.write_text(json.dumps(docs, ensure_ascii=False))
        return [str(path)]
