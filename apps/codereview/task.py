"""What the app's declarations (`app.py`) and the review pipeline (`pipeline.py`) share: the recipe's `task:`
section and the parsing of model text, in a module both import (neither imports the other for them)."""

from __future__ import annotations

import re
from collections import Counter
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .data import TASKS


class Budgets(BaseModel):
    model_config = ConfigDict(extra="forbid")
    necessity: int = Field(3, ge=1)
    comment: int = Field(96, ge=1)
    refine: int = Field(256, ge=1)


class CodeReviewTask(BaseModel):
    """The recipe's `task:` section."""
    model_config = ConfigDict(extra="forbid")
    task: Literal["necessity", "comment", "refine", "all"] = "all"  # `all`: one multi-task adapter
    max_hunk_lines: int = Field(120, ge=4, description="longer hunks are cut, with a note in the review")
    max_new_tokens: Budgets = Field(default_factory=Budgets)

    @property
    def tasks(self) -> tuple[str, ...]:
        return TASKS if self.task == "all" else (self.task,)


def parse_answer(output: str, task: str, stats: Counter | None = None) -> str:
    """necessity -> "yes" / "no" ("" when neither, counted); comment -> the comment's text; refine -> the
    code, without a Markdown fence around it."""
    if task == "necessity":
        from .metrics.codereview import yes_no

        value = {True: "yes", False: "no", None: ""}[yes_no(output)]
        if not value and stats is not None:
            stats["necessity: neither yes nor no"] += 1
        return value
    if task == "refine":
        return clean_code(output)
    text = output.strip()
    if not text and stats is not None:
        stats[f"{task}: empty output"] += 1
    return text


def clean_code(output: str) -> str:
    m = re.search(r"```[\w+-]*\n(.*?)(```|$)", output, flags=re.S)
    return (m.group(1) if m else output).strip("\n")
