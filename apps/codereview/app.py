"""The codereview app's declarations: CodeReviewer records in (`data.py`), the three tasks' prompts
(prompts/codereview/), parsing of model text, and the metric module (`metrics/codereview.py`)."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from peft_apps.core.config import Recipe
from peft_apps.core.data import Record
from peft_apps.core.errors import UserError
from peft_apps.core.prompts import render
from peft_apps.core.registry import App

from .data import TASKS, read_records
from .task import Budgets, CodeReviewTask, clean_code, parse_answer  # noqa: F401  (defined in task.py)

HEADLINES = {"necessity": ("f1", "precision", "recall"), "comment": ("bleu4", "bleu4_with_stopwords"),
             "refine": ("exact_match", "bleu4")}


class ReviewRequest(BaseModel):
    """`POST /v1/apps/codereview/review`: a unified diff in, the review out (as `codereview review --format
    json` writes it)."""
    model_config = ConfigDict(extra="forbid")
    diff: str
    suggest: bool = False
    model: str | None = None  # the served codereview run (multi-task); default: the only one
    adapters: dict[str, str] | None = None  # or one served run per task: {necessity, comment[, refine]}
    max_hunk_lines: int | None = Field(default=None, ge=4)


@dataclass
class CodeReviewApp(App):
    def headline_for(self, recipe: Recipe) -> tuple[str, ...]:
        task = self.task(recipe)
        if task.task != "all":
            return HEADLINES[task.task]
        return tuple(f"{t}_{HEADLINES[t][0]}" for t in TASKS)

    def render_task(self, task: str, fields: dict[str, Any], where: str) -> str:
        return render(self.name, task, where=where, **fields)

    def read(self, path: Path, recipe: Recipe, labelled: bool = True, prompts: bool = True) -> list[Record]:
        task = self.task(recipe)
        return read_records(Path(path), task.tasks, labelled, prompts, self.render_task, recipe.data.system_prompt)

    def inputs(self, items: list[str], recipe: Recipe) -> list[Record]:
        """`predict` takes CodeReviewer JSONL files, unified diffs (.diff/.patch: one example per hunk) and
        diff hunks as text."""
        from .diff import parse_diff

        task = self.task(recipe)
        out: list[Record] = []
        for item in items:
            p = Path(item)
            if p.is_file() and p.suffix in (".diff", ".patch"):
                from peft_apps.core.io import read_user_text

                text, _ = read_user_text(p)
                for h in parse_diff(text, str(p), task.max_hunk_lines).hunks:
                    out.extend(self._hunk_records(h.id, {"patch": h.patch, "lang": h.lang, "scope": h.scope},
                                                  recipe))
            elif p.is_file():
                out.extend(self.read(p, recipe, labelled=False))
            elif p.suffix in (".json", ".jsonl", ".diff", ".patch") and not any(c.isspace() for c in item):
                raise UserError(f"input not found: {p}", hint="pass an existing file, or a diff hunk as text")
            else:
                out.extend(self._hunk_records(str(len(out)), {"patch": item.strip(), "lang": "", "scope": ""}, recipe))
        return out

    def _hunk_records(self, id: str, fields: dict[str, Any], recipe: Recipe) -> list[Record]:
        tasks = [t for t in self.task(recipe).tasks if t != "refine"]
        if not tasks:
            raise UserError("a diff hunk has no refinement input (it needs the old code and a reviewer comment)",
                            hint="pass a refinement JSONL file ({\"old\", \"comment\", ...} per line)")
        return [Record.simple(id if len(tasks) == 1 else f"{t}:{id}", self.render_task(t, fields, f"input {id}"), "",
                              system=recipe.data.system_prompt, task=t, fields=fields) for t in tasks]

    def pipeline(self, engine, recipe: Recipe):
        from .pipeline import CodeReviewer

        return CodeReviewer(engine, recipe)

    def generate(self, pipeline, examples: list[Record], recipe: Recipe) -> list[str]:
        return pipeline.complete(examples)

    def serve_request(self):
        return ReviewRequest

    def serve(self, engine, runs: dict[str, Path], request: ReviewRequest) -> dict[str, Any]:
        """Review one diff: necessity for every hunk, comments (and suggestions) where needed."""
        from .diff import parse_diff
        from .pipeline import CodeReviewer, check_adapters, review_tasks
        from .report import to_json

        if request.adapters is not None:
            unknown = [n for n in request.adapters.values() if n not in runs]
            if unknown:
                raise UserError(f"adapters: {', '.join(unknown)} is no served codereview run; served: {', '.join(runs)}")
            folders: Any = {t: runs[n] for t, n in request.adapters.items()}
            names: dict[str, str] | None = dict(request.adapters)
        else:
            name = self.served_run(runs, request.model)
            folders, names = runs[name], {t: name for t in TASKS}
        recipe, trained = check_adapters(folders, review_tasks(request.suggest))
        reviewer = CodeReviewer(engine(sorted(set(names.values()))), recipe, names)
        reviewer.trained = trained
        limit = request.max_hunk_lines or reviewer.task_settings.max_hunk_lines
        parsed = parse_diff(request.diff, "request", limit)
        review = reviewer.review_hunks(parsed.hunks, suggest=request.suggest, counts=dict(parsed.counts))
        return json.loads(to_json(review))

    def parse(self, output: str, example: Record, task: Any, stats: Counter) -> str:
        return parse_answer(output, example.meta.get("task", "comment"), stats)

    def metrics(self, examples: list[Record], parsed: list[Any], task: Any) -> dict[str, Any]:
        metric = self.load_metric()
        present = [t for t in TASKS if any(ex.meta.get("task") == t for ex in examples)]
        out: dict[str, Any] = {}
        for t in present:
            idx = [i for i, ex in enumerate(examples) if ex.meta.get("task") == t]
            m = metric.compute(predictions=[parsed[i] for i in idx], references=[examples[i].completion for i in idx],
                               task=t)
            out.update(m if len(present) == 1 else {f"{t}_{k}": v for k, v in m.items()})
        out["n"] = len(examples)
        return out

    def convert(self, source: Path, out: Path, **options: Any) -> dict[str, Any]:
        """CodeReviewer JSONL -> one chat-records file per task under `out` (what training sees), + report."""
        from peft_apps.core.config import load_recipe
        from peft_apps.core.data import write_jsonl
        from peft_apps.core.io import atomic_write

        recipe = load_recipe(self.recipe_path(None), app=self.name)
        records = self.read(Path(source), recipe)
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise UserError(f"{out} exists and is not a folder", hint="give a new or existing folder")
        out.mkdir(parents=True, exist_ok=True)
        report: dict[str, Any] = {"source": str(source), "records": {}}
        for t in TASKS:
            rows = [{"id": r.meta.get("row_id", r.id), "task": t, "messages": r.prompt, "completion": r.completion}
                    for r in records if r.meta.get("task") == t]
            if rows:
                write_jsonl(out / f"{t}.jsonl", rows)
                report["records"][t] = len(rows)
        atomic_write(out / "report.json", json.dumps(report, indent=2))
        return report

    def demo_inputs(self, recipe: Recipe, work_dir: Path) -> list[str]:
        """The bundled real diff (36 hunks of a public Python project): one prediction per hunk."""
        return [str(self.data / "itsdangerous-0e255fc.diff")]
