"""toy: the smallest complete app, one folder (the README's walk-through for app authors).

    toy_app/
      __init__.py          this file: the app's declarations and hooks, one register_app call
      recipes/lora.yaml    recipes/demo.yaml   its recipes (the `task:` section validated by ToyTask)
      prompts/ask.j2       its prompt template
      metrics/accuracy.py  its metric, an `evaluate` module loaded by path
      data/antonyms.jsonl  its bundled sample: `bundled:toy/antonyms.jsonl`

The core does the rest: split and limit, batched generation, the predictions file, `eval`, `predict`,
`score`, metrics while training. `tests/test_app_contract.py` covers it as it covers every app.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from peft_apps.core.data import Record, read_jsonl, require
from peft_apps.core.prompts import render
from peft_apps.core.registry import App, register_app

HERE = Path(__file__).parent


class ToyTask(BaseModel):  # the recipe's `task:` section
    model_config = ConfigDict(extra="forbid")
    lowercase: bool = True


@dataclass
class ToyApp(App):
    def read(self, path, recipe, labelled=True, prompts=True):
        out = []
        for i, (lineno, row) in enumerate(read_jsonl(path)):
            word = require(row, "word", f"{path}:{lineno}")
            answer = require(row, "antonym", f"{path}:{lineno}") if labelled else ""
            prompt = render(self.name, "ask", word=word) if prompts else ""
            out.append(Record.simple(str(row.get("id", i)), prompt, answer))
        return out

    def from_text(self, text, id, recipe):
        return Record.simple(id, render(self.name, "ask", word=text), "")

    def parse(self, output, example, task, stats: Counter):
        words = output.split()
        if not words:
            stats["empty_output"] += 1  # never raise: count what cannot be used
            return ""
        return words[0].lower() if task.lowercase else words[0]


app = register_app(ToyApp(
    name="toy", summary="antonyms of single words (a walk-through app)",
    package_dir=HERE, prompts=HERE / "prompts", data=HERE / "data",
    task_schema=ToyTask, metric="accuracy.py", headline=("accuracy",),
))
