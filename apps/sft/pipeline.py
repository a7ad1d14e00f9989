"""SFTPipeline: a base model plus an sft adapter, completing records or plain prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from peft_apps.core.config import Recipe, run_recipe
from peft_apps.core.data import Record
from peft_apps.core.engine import Engine
from peft_apps.core.engine.remote import open_engine

from .app import SFTTask


class SFTPipeline:
    def __init__(self, engine: Engine, recipe: Recipe):
        self.engine = engine
        self.recipe = recipe

    @classmethod
    def from_pretrained(cls, base: str | None, adapters: str | Path, endpoint: str | None = None,
                        model: str | None = None, api_key_env: str | None = None) -> "SFTPipeline":
        """`endpoint`: a server's URL to generate on instead of loading the model here (`model`: its name for
        the adapter, default the run folder's name; `api_key_env`: the variable holding the API key)."""
        recipe = run_recipe(adapters, "sft")  # (first: a folder that is no run's is named before loading)
        return cls(open_engine(base, adapters, endpoint, model, api_key_env), recipe)

    def complete_records(self, records: Sequence[Record], recipe: Recipe | None = None) -> list[str]:
        from peft_apps.core.loop import generation_options

        r = recipe or self.recipe
        opts = generation_options(r, SFTTask.model_validate(r.task))
        return [t.strip() for t in self.engine.chat([rec.prompt for rec in records], options=opts)]

    def __call__(self, rows: Sequence[dict[str, Any] | str], template: str | None = None) -> list[str]:
        """Complete each row (fields for the template) or plain prompt string."""
        from peft_apps.core.prompts import render

        tpl = template or self.recipe.data.template
        recs = [Record.simple(str(i), render("sft", tpl, **(row if isinstance(row, dict) else {"prompt": row})), "")
                for i, row in enumerate(rows)]
        return self.complete_records(recs)
