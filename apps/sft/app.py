"""The sft app's declarations: its data (JSONL + a template), its parse (the answer text) and metric
(`metrics/classification.py`). The core's loop does the rest."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from peft_apps.core.config import Recipe
from peft_apps.core.data import Record, read_jsonl, require
from peft_apps.core.errors import UserError
from peft_apps.core.prompts import render
from peft_apps.core.registry import App

DEFAULT_DATA = "entity_types.jsonl"


class SFTTask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    completion_field: str = "completion"
    id_field: str = "id"
    stop: list[str] = []


@dataclass
class SFTApp(App):
    def read(self, path: Path, recipe: Recipe, labelled: bool = True, prompts: bool = True) -> list[Record]:
        """One example per JSONL object: the template renders its fields into the prompt; the id is the
        object's `task.id_field`, else its position."""
        task = self.task(recipe)
        out = []
        for i, (lineno, obj) in enumerate(read_jsonl(path)):
            where = f"{path}:{lineno}"
            completion = require(obj, task.completion_field, where) if labelled else ""
            user = render(self.name, recipe.data.template, where=where, **obj) if prompts else ""
            out.append(Record.simple(str(obj.get(task.id_field, i)), user, completion,
                                     system=recipe.data.system_prompt, row=obj))
        return out

    def from_text(self, text: str, id: str, recipe: Recipe) -> Record:
        """A plain text fills the template's `prompt`; an inline JSON object fills its fields by name."""
        from peft_apps.core.prompts import template_fields

        fields = {"prompt": text}
        if text.lstrip().startswith("{"):
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise UserError(f"input {id}: not a valid JSON object ({e.msg} at column {e.colno})") from None
            if isinstance(obj, dict):
                fields = obj
        needed = template_fields(self.name, recipe.data.template)
        missing = [f for f in needed if f not in fields]
        if missing:
            example = json.dumps({f: "..." for f in needed})
            raise UserError(f"input {id}: template {recipe.data.template!r} needs the fields {', '.join(needed)}; "
                            f"a plain text only fills 'prompt'",
                            hint=f"pass a JSON object, e.g. '{example}', or a .jsonl file with those fields")
        return Record.simple(id, render(self.name, recipe.data.template, where=f"input {id}", **fields), "",
                             system=recipe.data.system_prompt)

    def parse(self, output: str, example: Record, task: Any, stats: Counter) -> str:
        return output.strip()

    def demo_inputs(self, recipe: Recipe, work_dir: Path) -> list[str]:
        task = self.task(recipe)
        rows = [{k: v for k, v in r.meta["row"].items() if k != task.completion_field}
                for r in self.training_records(recipe, "eval")[:5]]
        path = work_dir / "demo_inputs.jsonl"
        path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows), encoding="utf-8")
        return [str(path)]
