"""The autore app's hooks: RHF training records, conversion, evaluation, prediction, scoring."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from peft_apps.core.config import Recipe
from peft_apps.core.data import Record, read_jsonl, require, write_jsonl
from peft_apps.core.errors import UserError
from peft_apps.core.prompts import render
from peft_apps.core.registry import App
from peft_apps.core.resources import bundled_or_path

from .docred import STAGES, load_docs, stage_examples

Stage = Literal["relation", "head", "facts"]


class AutoRETask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stages: list[Stage] = list(STAGES)  # which stages this adapter learns (one adapter: all three)
    max_docs: int | None = None
    inverse: bool = True  # add inverse triples at inference
    max_new_tokens: int = 160
    train_file: str | None = None  # for Ign F1 in `eval`: the DocRED train file, when available


def _records(examples: list[dict[str, Any]], stage: str, system: str | None) -> list[Record]:
    fields = {"relation": ("passage",), "head": ("passage", "relation", "description"),
              "facts": ("passage", "relation", "description", "head")}[stage]
    return [Record.simple(ex["id"], render("autore", stage, where=ex["id"], **{k: ex[k] for k in fields}),
                          ex["completion"], system=system, stage=stage) for ex in examples]


@dataclass
class AutoREApp(App):
    def _docs(self, recipe: Recipe, split: str) -> list[dict[str, Any]]:
        spec = recipe.data.eval if split == "eval" and recipe.data.eval else recipe.data.train
        if not spec:
            raise UserError("no data: set data.train=PATH to a DocRED/Re-DocRED JSON file",
                            hint="`peft-apps demo autore` uses the bundled sample (bundled:autore/redocred_dev_sample.json)")
        docs = load_docs(bundled_or_path(spec))
        task = self.task(recipe)
        if not (split == "eval" and recipe.data.eval):  # one file: the last eval_fraction is held out
            cut = len(docs) - int(round(len(docs) * recipe.data.eval_fraction))
            docs = docs[:cut] if split == "train" else docs[cut:]
        limit = recipe.data.limit_eval if split == "eval" else recipe.data.limit_train
        limit = limit or task.max_docs
        return docs[:limit] if limit else docs

    def training_records(self, recipe: Recipe, split: str) -> list[Record]:
        task = self.task(recipe)
        ex = stage_examples(self._docs(recipe, split))
        out: list[Record] = []
        for stage in task.stages:
            out.extend(_records(getattr(ex, stage), stage, recipe.data.system_prompt))
        return out

    def convert(self, source: Path, out: Path, **options: Any) -> dict[str, Any]:
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
        (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
        return report

    # ---- inference -------------------------------------------------------------------------------
    def _pipeline(self, adapter: str, model: str | None, recipe: Recipe | None):
        from .pipeline import AutoRE

        task = self.task(recipe) if recipe else AutoRETask()
        return AutoRE.from_pretrained(model, adapter, inverse=task.inverse, max_new_tokens=task.max_new_tokens)

    def evaluate(self, adapter: str, recipe: Recipe, split: str, out_dir: Path) -> dict[str, Any]:
        docs = self._docs(recipe, split)
        if recipe.eval.limit:
            docs = docs[: recipe.eval.limit]
        pipe = self._pipeline(adapter, None, recipe)
        results = pipe.extract(docs)
        preds = [{"id": i, "output": r.model_text()} for i, r in enumerate(results)]
        write_jsonl(out_dir / "eval_predictions.jsonl", preds)
        task = self.task(recipe)
        train = bundled_or_path(task.train_file) if task.train_file else None
        metrics = score_docs(docs, {i: [(t["head"], t["relation_id"], t["tail"]) for t in r.triples]
                                    for i, r in enumerate(results)}, train)
        metrics["stats"] = dict(sum((Counter(r.stats) for r in results), Counter()))
        metrics["split"] = split
        return metrics

    def predict(self, adapter: str, inputs: list[str], recipe: Recipe | None, **options: Any) -> list[Any]:
        from .inputs import read_inputs

        pipe = self._pipeline(adapter, options.get("model"), recipe)
        items = read_inputs(inputs)
        return [{"id": name, **r.as_dict()} for (name, _), r in zip(items, pipe.extract([x for _, x in items]))]

    def demo_inputs(self, recipe: Recipe, work_dir: Path) -> list[str]:
        docs = self._docs(recipe, "eval")[:2]
        path = work_dir / "demo_docs.json"
        path.write_text(json.dumps(docs, ensure_ascii=False))
        return [str(path)]

    def score(self, gold: Path, pred: Path, train: Path | None = None, **options: Any) -> dict[str, Any]:
        return score_files(gold, pred, train)


def score_docs(docs: list[dict[str, Any]], preds: dict[int, list[tuple[str, str, str]]],
               train: Path | None = None) -> dict[str, Any]:
    from peft_apps.eval.docred import name_match, names_to_submission, official, train_facts

    nm = name_match(docs, preds)
    sub, unmapped = names_to_submission(docs, preds)
    off = official(docs, sub, train_facts(load_docs(train)) if train else None)
    per_rel = nm.pop("per_relation")
    return {"precision": nm["precision"], "recall": nm["recall"], "f1": nm["f1"], "tp": nm["tp"],
            "predicted": nm["predicted"], "gold": nm["gold"], **{f"docred_{k}": v for k, v in off.items()},
            "unmapped_triples": unmapped, "per_relation": per_rel}


def score_files(gold: Path, pred: Path, train: Path | None = None) -> dict[str, Any]:
    """GOLD: DocRED JSON. PRED: JSONL {id, output} of raw `head | relation | tail` text (id: position in
    GOLD or title), or the official submission list [{title, h_idx, t_idx, r, evidence?}]."""
    from peft_apps.eval.docred import official, train_facts

    from .docred import passage
    from .parse import Passage, parse_triple_lines

    docs = load_docs(gold, require_labels=True)
    if not pred.is_file():
        raise UserError(f"prediction file not found: {pred}")
    head = pred.read_text(encoding="utf-8").lstrip()[:1]
    if head == "[":
        try:
            sub = json.loads(pred.read_text(encoding="utf-8"))
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
        out = official(docs, sub, train_facts(load_docs(train)) if train else None)
        return {f"docred_{k}": v for k, v in out.items()}
    by_title = {d["title"]: i for i, d in enumerate(docs)}
    preds: dict[int, list[tuple[str, str, str]]] = {}
    stats: Counter = Counter()
    for lineno, obj in read_jsonl(pred):
        where = f"{pred}:{lineno}"
        rid = require(obj, "id", where, (str, int))
        di = by_title.get(rid) if isinstance(rid, str) and rid in by_title else (
            int(rid) if str(rid).isdigit() else None)
        if di is None or not 0 <= di < len(docs):
            raise UserError(f"{where}: id {rid!r} is neither a position in {gold} (0..{len(docs) - 1}) nor a title")
        text = require(obj, "output", where)
        triples = parse_triple_lines(text, Passage(passage(docs[di])), stats)
        preds.setdefault(di, []).extend((t.head, t.relation_id, t.tail) for t in triples)
    out = score_docs(docs, preds, train)
    out["parse_stats"] = dict(stats)
    out["documents_without_prediction"] = len(docs) - len(preds)
    return out
