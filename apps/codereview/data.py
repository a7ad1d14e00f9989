"""CodeReviewer's JSONL records -> the three tasks' examples.

CodeReviewer (Li et al. 2022) ships one JSONL file per task, with these fields:
- review necessity (`cls-*.jsonl`) and comment generation (`msg-*.jsonl`): `patch` (one diff hunk),
  `y` (1: the hunk got a review comment), `msg` (that comment; "" when y=0), `oldf` (the whole file
  before the change), `id`, `idx`, `proj`, `lang`.
- code refinement (`ref-*.jsonl`): `old_hunk`, `oldf`, `hunk`, `comment` (the reviewer's comment),
  `old` (the code before review), `new` (the revised code), `lang`, and ids (`ids`, `repo`, `ghid`).

A row gives a necessity example (`patch` + `y`), a comment example when it has a comment (`y` = 1 and a
non-empty `msg`), and a refinement example when it has `old` + `new` + `comment`. So one file of each
kind, or all of them concatenated, trains any of the tasks; `task.task` picks which.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from peft_apps.core.data import Record, read_jsonl, require
from peft_apps.core.errors import UserError, warn

from .context import LANGUAGES, enclosing_scope

TASKS = ("necessity", "comment", "refine")
_HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def language(lang: str) -> str:
    """CodeReviewer's `lang` (py, go, .cs, ...) -> the name the prompts and tree-sitter use."""
    key = lang.strip().lstrip(".").lower()
    return LANGUAGES.get(key, key)


def old_lines(patch: str) -> tuple[int, int] | None:
    """The first and last line of the old file a hunk touches, from its @@ header."""
    m = _HUNK_HEADER.match(patch)
    if not m:
        return None
    start, count = int(m.group(1)), int(m.group(2) or 1)
    return start, max(start, start + count - 1)


def scope_of(row: dict[str, Any], patch: str, lang: str) -> str:
    """The hunk's enclosing function/class signature in the old file (tree-sitter), else the hunk header's
    own section text (what `git diff` prints after @@), else ""."""
    lines = old_lines(patch)
    oldf = row.get("oldf")
    if lines and isinstance(oldf, str) and oldf:
        scope = enclosing_scope(oldf, lang, *lines)
        if scope:
            return scope
    m = re.match(r"^@@[^@]*@@ ?(.*)", patch)
    return m.group(1).strip() if m else ""


def examples_of(row: dict[str, Any], where: str, tasks: tuple[str, ...], labelled: bool, prompts: bool,
                counts: Counter) -> list[tuple[str, dict[str, Any], str]]:
    """(task, prompt fields, gold answer) for each of `tasks` the row can give."""
    out = []
    lang = language(str(row.get("lang", "")))
    if "patch" in row:
        patch = require(row, "patch", where)
        fields = {"patch": patch.rstrip("\n"), "lang": lang, "scope": scope_of(row, patch, lang) if prompts else ""}
        if "necessity" in tasks:
            if labelled:
                y = require(row, "y", where, (int, bool))
                if int(y) not in (0, 1):
                    raise UserError(f"{where}: field 'y' must be 0 or 1, got {y!r}")
                out.append(("necessity", fields, "yes" if int(y) == 1 else "no"))
            else:
                out.append(("necessity", fields, ""))
        if "comment" in tasks:
            msg = row.get("msg") or ""
            if not isinstance(msg, str):
                raise UserError(f"{where}: field 'msg' must be str, got {type(msg).__name__}")
            if msg.strip() or not labelled:
                out.append(("comment", fields, msg.strip() if labelled else ""))
            else:
                counts["comment: no gold comment (y=0)"] += 1
    elif "old" in row or "old_hunk" in row:
        if "refine" in tasks:
            old = require(row, "old", where)
            comment = require(row, "comment", where)
            new = require(row, "new", where) if labelled else ""
            fields = {"old": old.rstrip("\n"), "comment": comment.strip(), "lang": lang,
                      "scope": scope_of(row, row.get("old_hunk") or "", lang) if prompts else ""}
            out.append(("refine", fields, new.rstrip("\n")))
    else:
        raise UserError(f"{where}: neither a diff hunk ('patch') nor a refinement record ('old', 'new', 'comment')",
                        hint="CodeReviewer's files: cls-/msg-*.jsonl have patch, y, msg; ref-*.jsonl have old, new, comment")
    return out


def read_records(path: Path, tasks: tuple[str, ...], labelled: bool, prompts: bool, render_task,
                 system: str | None = None) -> list[Record]:
    """The examples of `tasks` in a CodeReviewer JSONL file. Ids: the row's `id` (else its position); with
    several tasks, `task:id`. Rows giving no example of the chosen tasks are counted in one warning."""
    records: list[Record] = []
    counts: Counter = Counter()
    rows = 0
    for i, (lineno, row) in enumerate(read_jsonl(path)):
        rows += 1
        where = f"{path}:{lineno}"
        rid = row.get("id", i)
        for task, fields, gold in examples_of(row, where, tasks, labelled, prompts, counts):
            ex_id = str(rid) if len(tasks) == 1 else f"{task}:{rid}"
            prompt = render_task(task, fields, where) if prompts else ""
            records.append(Record.simple(ex_id, prompt, gold, system=system, task=task, fields=fields, row_id=rid))
    if counts and labelled:
        detail = ", ".join(f"{n} x {k}" for k, n in counts.items())
        warn(f"{path}: {sum(counts.values())} of {rows} rows give no {'/'.join(tasks)} example ({detail})")
    return records
