"""The sft app's hooks: records from JSONL + template, evaluation, prediction, scoring."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from peft_apps.core.config import Recipe
from peft_apps.core.data import Record, read_jsonl, require
from peft_apps.core.errors import UserError
from peft_apps.core.prompts import render
from peft_apps.core.registry import App
from peft_apps.core.resources import bundled_or_path

DEFAULT_DATA = "entity_types.jsonl"


class SFTTask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    completion_field: str = "completion"
    id_field: str = "id"
    stop: list[str] = []


def _in_eval(rid: str, fraction: float, seed: int) -> bool:
    h = int(hashlib.sha256(f"{seed}:{rid}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return h < fraction


def load_rows(path: Path, task: SFTTask) -> list[tuple[str, int, dict[str, Any]]]:
    rows = []
    for lineno, obj in read_jsonl(path):
        rid = str(obj.get(task.id_field, lineno - 1))
        rows.append((rid, lineno, obj))
    return rows


def to_record(path: Path, lineno: int, rid: str, obj: dict[str, Any], recipe: Recipe, task: SFTTask,
              need_completion: bool = True) -> Record:
    where = f"{path}:{lineno}"
    completion = require(obj, task.completion_field, where) if need_completion else ""
    user = render("sft", recipe.data.template, where=where, **obj)
    return Record.simple(rid, user, completion, system=recipe.data.system_prompt, row=obj)


@dataclass
class SFTApp(App):
    def data_path(self, recipe: Recipe, split: str) -> Path:
        if split == "eval" and recipe.data.eval:
            return bundled_or_path(recipe.data.eval)
        if not recipe.data.train:
            raise UserError("no training data: set data.train=FILE.jsonl (one JSON object per line)",
                            hint="`peft-apps demo sft` runs on the bundled sample (data.train=bundled:sft/"
                                 f"{DEFAULT_DATA})")
        return bundled_or_path(recipe.data.train)

    def training_records(self, recipe: Recipe, split: str) -> list[Record]:
        task = self.task(recipe)
        path = self.data_path(recipe, split)
        rows = load_rows(path, task)
        if not recipe.data.eval:  # one file: split it by a stable hash of the id
            frac = recipe.data.eval_fraction
            rows = [r for r in rows if _in_eval(r[0], frac, recipe.train.seed) == (split == "eval")]
        limit = recipe.data.limit_eval if split == "eval" else recipe.data.limit_train
        rows = rows[:limit] if limit else rows
        return [to_record(path, ln, rid, obj, recipe, task) for rid, ln, obj in rows]

    # ---- evaluation ----------------------------------------------------------------------------
    def evaluate(self, adapter: str, recipe: Recipe, split: str, out_dir: Path) -> dict[str, Any]:
        from peft_apps.eval.classification import classification_report

        from .pipeline import SFTPipeline

        records = self.training_records(recipe, split)
        if recipe.eval.limit:
            records = records[: recipe.eval.limit]
        if not records:
            raise UserError(f"no {split} records to evaluate on (data.eval / data.eval_fraction)")
        pipe = SFTPipeline.from_pretrained(None, adapter)
        outputs = pipe.complete_records(records, recipe)
        metrics = classification_report(outputs, [r.completion for r in records])
        metrics["split"] = split
        out_dir.mkdir(parents=True, exist_ok=True)
        with (out_dir / "eval_predictions.jsonl").open("w", encoding="utf-8") as fh:
            for r, o in zip(records, outputs):
                fh.write(json.dumps({"id": r.id, "output": o, "gold": r.completion}, ensure_ascii=False) + "\n")
        return metrics

    def predict(self, adapter: str, inputs: list[str], recipe: Recipe | None, **options: Any) -> list[Any]:
        from .pipeline import SFTPipeline

        pipe = SFTPipeline.from_pretrained(options.get("model"), adapter)
        recipe = recipe or pipe.recipe
        task = self.task(recipe)
        results = []
        for item in inputs:
            p = Path(item)
            if p.suffix == ".jsonl" and p.is_file():
                rows = load_rows(p, task)
                recs = [to_record(p, ln, rid, obj, recipe, task, need_completion=False) for rid, ln, obj in rows]
            else:
                recs = [Record.simple(str(len(results)), render("sft", recipe.data.template, where="input",
                                                                 prompt=item), "")]
            outs = pipe.complete_records(recs, recipe)
            results.extend({"id": r.id, "output": o} for r, o in zip(recs, outs))
        return results

    def demo_inputs(self, recipe: Recipe, work_dir: Path) -> list[str]:
        task = self.task(recipe)
        rows = [{k: v for k, v in r.meta["row"].items() if k != task.completion_field}
                for r in self.training_records(recipe, "eval")[:5]]
        path = work_dir / "demo_inputs.jsonl"
        path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows), encoding="utf-8")
        return [str(path)]

    def score(self, gold: Path, pred: Path, **options: Any) -> dict[str, Any]:
        if options.get("train") is not None:
            raise UserError("sft scoring takes no --train file")
        from peft_apps.eval.classification import classification_report

        task = SFTTask()
        golds = {}
        for i, (lineno, obj) in enumerate(read_jsonl(gold)):
            golds[str(obj.get(task.id_field, i))] = require(obj, task.completion_field, f"{gold}:{lineno}")
        preds = {}
        for lineno, obj in read_jsonl(pred):
            where = f"{pred}:{lineno}"
            rid = str(require(obj, "id", where, (str, int)))
            if rid not in golds:
                raise UserError(f"{where}: id {rid!r} is not in {gold}")
            preds[rid] = require(obj, "output", where)
        missing = [k for k in golds if k not in preds]
        ids = list(golds)
        report = classification_report([preds.get(k, "") for k in ids], [golds[k] for k in ids])
        report["missing_predictions"] = len(missing)
        return report
