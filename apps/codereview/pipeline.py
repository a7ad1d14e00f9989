"""CodeReviewer: one base model with the necessity, comment and refinement adapters (or one multi-task
adapter), reviewing diffs and completing CodeReviewer records.

    from peft_apps.apps.codereview import CodeReviewer
    reviewer = CodeReviewer.from_pretrained(None, "runs/codereview-lora")          # one multi-task adapter
    reviewer = CodeReviewer.from_pretrained(None, {"necessity": "runs/n", "comment": "runs/c"})
    review = reviewer.review(open("change.diff").read())
    review.comments          # the hunks that need a comment, with the comment and where it goes

A review runs necessity on every hunk, then comment generation on the hunks that need one (and, with
`suggest=True`, refinement of the commented code), each stage batched across all hunks. The hunk's
text is encoded once per adapter and shared by its stages through the core's prefix planner: with a
multi-task adapter the comment call reuses the necessity call's cache of the hunk.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from peft_apps.core.config import Recipe, run_recipe
from peft_apps.core.data import Record, render_prompt
from peft_apps.core.engine import Engine, GenerationOptions, PrefixTree
from peft_apps.core.engine.remote import open_engine
from peft_apps.core.prompts import render

from .task import CodeReviewTask, clean_code, parse_answer
from .data import TASKS
from .diff import Hunk, ParsedDiff, parse_diff


@dataclass
class HunkReview:
    path: str
    start_line: int
    end_line: int
    lang: str
    scope: str
    needs_comment: bool
    necessity_output: str
    comment: str = ""
    suggestion: str | None = None
    truncated: bool = False
    patch: str = ""
    new_start: int = 0  # the lines a suggestion replaces
    new_end: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Review:
    hunks: list[HunkReview]
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def comments(self) -> list[HunkReview]:
        return [h for h in self.hunks if h.needs_comment]


def review_tasks(suggest: bool) -> tuple[str, ...]:
    """The tasks a review needs its adapters trained for: necessity and comment, refine too with `suggest`."""
    return ("necessity", "comment", "refine") if suggest else ("necessity", "comment")


def check_adapters(adapters: str | Path | dict[str, str | Path], needs: tuple[str, ...],
                   overrides: list[str] | None = None) -> tuple[Recipe, set[str]]:
    """The recipe of the first adapter (with `overrides` applied) and the tasks the adapters were trained for,
    after checking every folder: a codereview run (one message for a run of another app) trained for the
    review tasks it is used for. A task `needs` that no adapter was trained for is an error naming what the
    adapters have and how to train the rest."""
    from peft_apps.core.errors import UserError

    from .task import CodeReviewTask

    if isinstance(adapters, dict):
        unknown = set(adapters) - set(TASKS)
        if unknown:
            raise UserError(f"unknown review task(s) {', '.join(sorted(unknown))}; adapters are per task: "
                            f"{', '.join(TASKS)}")
        if not adapters:
            raise UserError("no adapter given")
    folders = dict(adapters) if isinstance(adapters, dict) else {"": adapters}
    recipes = {k: run_recipe(d, "codereview") for k, d in folders.items()}
    trained = {k: CodeReviewTask.model_validate(r.task).tasks for k, r in recipes.items()}
    for k, tasks in trained.items():
        if k and k not in tasks:
            raise UserError(f"--adapters {k}={folders[k]}: that adapter was trained for {', '.join(tasks)}, not {k}",
                            hint=f"train one with `peft-apps train codereview --task {k}`")
    have = {t for k, tasks in trained.items() for t in ([k] if k else tasks)}
    missing = [t for t in needs if t not in have]
    if missing:
        shown = ", ".join(f"{d} ({', '.join(trained[k])})" for k, d in folders.items())
        flag = {"comment": "a review's comments", "refine": "--suggest (refined code)", "necessity": "a review"}
        raise UserError(f"{' and '.join(flag[t] for t in missing)} need{'s' if len(missing) == 1 else ''} an "
                        f"adapter trained for {', '.join(missing)}; given: {shown}",
                        hint=f"train it: `peft-apps train codereview --task {missing[0]}` (or task.task=all for "
                             f"one adapter of every task), then pass --adapters "
                             + ",".join(f"{t}=DIR" for t in TASKS if t in have or t in missing))
    recipe = next(iter(recipes.values()))
    if overrides:
        from peft_apps.core.config import apply_overrides, validate_recipe

        recipe = validate_recipe(apply_overrides(recipe.model_dump(), list(overrides)), "the adapter's recipe",
                                 {o.partition("=")[0] for o in overrides})
    return recipe, have


class CodeReviewer:
    def __init__(self, engine: Engine, recipe: Recipe, adapters: dict[str, str] | None = None):
        self.engine = engine
        self.recipe = recipe
        self.task_settings: CodeReviewTask = CodeReviewTask.model_validate(recipe.task)
        default = engine.adapters[0] if engine.adapters else None
        self.adapters = {t: (adapters or {}).get(t, default) for t in TASKS}
        self.trained: set[str] | None = None  # the tasks the adapters learnt, where from_pretrained checked them

    @classmethod
    def from_pretrained(cls, base: str | None, adapters: str | Path | dict[str, str | Path],
                        suggest: bool = False, overrides: list[str] | None = None, endpoint: str | None = None,
                        model: str | None = None, api_key_env: str | None = None) -> "CodeReviewer":
        """`adapters`: one multi-task adapter folder, or {task: folder} for necessity / comment / refine.
        Each folder must be a codereview run trained for what a review needs (necessity and comment; refine
        too with `suggest`): checked before the model loads. `overrides`: KEY=VALUE changes to the adapter's
        recipe (e.g. task.max_new_tokens.comment=48). `endpoint`: a server's URL to generate on instead of
        loading the model here (`model`: its name for the adapter, or task=NAME,... for several; default the run
        folders' names; `api_key_env`: the variable holding the API key)."""
        recipe, trained = check_adapters(adapters, review_tasks(suggest), overrides)
        engine = open_engine(base, adapters, endpoint, model, api_key_env)
        names = {t: t for t in adapters} if isinstance(adapters, dict) else None
        reviewer = cls(engine, recipe, names)
        reviewer.trained = trained
        return reviewer

    # ---- prompts -----------------------------------------------------------------------------------
    def _ids(self, task: str, fields: dict[str, Any]) -> list[int]:
        msgs = Record.simple("", render("codereview", task, **fields), "", system=self.recipe.data.system_prompt).prompt
        return self.engine.tokenizer(render_prompt(self.engine.tokenizer, msgs), add_special_tokens=False)["input_ids"]

    def _options(self, batch_size: int | None = None) -> GenerationOptions:
        from dataclasses import replace

        from peft_apps.core.loop import generation_options

        o = generation_options(self.recipe)
        return replace(o, batch_size=batch_size) if batch_size else o

    def budget(self, task: str) -> int:
        return getattr(self.task_settings.max_new_tokens, task)

    def _stage(self, tree: PrefixTree, task: str, items: list[tuple[int, dict[str, Any] | list[int]]],
               roots: dict[int, list[int]], batch_size: int | None) -> dict[int, str]:
        """Generate `task` for each (hunk index, prompt fields or their token ids), over the hunk's cached
        root prefix."""
        adapter = self.adapters[task]
        if not items:
            return {}
        calls = [(((i, adapter),), f if isinstance(f, list) else self._ids(task, f)) for i, f in items]
        tree.roots({(i, adapter): roots[i] for i, _ in items if roots.get(i)}, adapter)
        texts = tree.generate(calls, adapter, self._options(batch_size), budgets=[self.budget(task)] * len(calls))
        return {i: t for (i, _), t in zip(items, texts)}

    # ---- the review ----------------------------------------------------------------------------------
    def review(self, diff: str | ParsedDiff, suggest: bool = False, batch_size: int | None = None,
               read_file=None) -> Review:
        """Review a unified diff (text, or `parse_diff`'s result): necessity for every hunk, then a comment
        for each that needs one (and a revised version of its code with `suggest`)."""
        parsed = diff if isinstance(diff, ParsedDiff) else parse_diff(
            diff, max_lines=self.task_settings.max_hunk_lines, read_file=read_file)
        return self.review_hunks(parsed.hunks, suggest, batch_size, dict(parsed.counts))

    def review_hunks(self, hunks: Sequence[Hunk], suggest: bool = False, batch_size: int | None = None,
                     counts: dict[str, int] | None = None) -> Review:
        if suggest and self.trained is not None and "refine" not in self.trained:
            from peft_apps.core.errors import UserError

            raise UserError(f"suggest=True needs an adapter trained for refine; these learnt "
                            f"{', '.join(sorted(self.trained))}",
                            hint="`peft-apps train codereview --task refine`, then from_pretrained(..., "
                                 "{'necessity': DIR, 'comment': DIR, 'refine': DIR}, suggest=True)")
        fields = [{"patch": h.patch, "lang": h.lang, "scope": h.scope} for h in hunks]
        # each prompt is tokenized once; a hunk's root is the prefix its necessity and comment prompts
        # share (the hunk itself), encoded once and reused by both stages
        ids = {t: [self._ids(t, f) for f in fields] for t in ("necessity", "comment")}
        roots = {i: os.path.commonprefix([ids["necessity"][i], ids["comment"][i]]) for i in range(len(hunks))}
        tree = PrefixTree(self.engine)
        answers = self._stage(tree, "necessity", list(enumerate(ids["necessity"])), roots, batch_size)
        needs = {i: parse_answer(answers[i], "necessity") == "yes" for i in range(len(hunks))}
        comments = self._stage(tree, "comment", [(i, ids["comment"][i]) for i in range(len(hunks)) if needs[i]],
                               roots, batch_size)
        comments = {i: parse_answer(t, "comment") for i, t in comments.items()}
        suggestions: dict[int, str] = {}
        if suggest:
            todo = [(i, {"old": _new_code(hunks[i]), "comment": comments[i],
                         "lang": hunks[i].lang, "scope": hunks[i].scope}) for i in comments
                    if comments[i] and not hunks[i].truncated]  # a cut hunk's code is incomplete: no rewrite
            suggestions = {i: clean_code(t) for i, t in self._stage(tree, "refine", todo, {}, batch_size).items()}
        out = [HunkReview(path=h.path, start_line=h.start_line, end_line=h.end_line, lang=h.lang, scope=h.scope,
                          needs_comment=needs[i], necessity_output=answers[i], comment=comments.get(i, ""),
                          suggestion=suggestions.get(i), truncated=h.truncated, patch=h.patch,
                          new_start=h.new_start, new_end=h.new_end)
               for i, h in enumerate(hunks)]
        counts = dict(counts or {"hunks": len(hunks), "reviewed": len(hunks)})
        counts["commented"] = sum(needs.values())
        notes = [f"{h.path}:{h.start_line}: hunk of {h.lines} lines cut to {self.task_settings.max_hunk_lines} "
                 f"(task.max_hunk_lines)" for h in hunks if h.truncated]
        return Review(out, counts, notes)

    # ---- records (eval, predict) -------------------------------------------------------------------------
    def complete(self, records: Sequence[Record], batch_size: int | None = None) -> list[str]:
        """Model text for CodeReviewer records, each through its task's adapter, batched per task."""
        out = [""] * len(records)
        for task in TASKS:
            idx = [i for i, r in enumerate(records) if r.meta.get("task") == task]
            if not idx:
                continue
            o = self._options(batch_size)
            o.max_new_tokens = self.budget(task)
            texts = self.engine.chat([records[i].prompt for i in idx], adapter=self.adapters[task], options=o)
            for i, t in zip(idx, texts):
                out[i] = t
        return out


def _new_code(h: Hunk) -> str:
    """The code a reviewer commented on: the hunk's new side (context and added lines)."""
    lines = [ln[1:] for ln in h.patch.split("\n")[1:] if ln[:1] in (" ", "+")]
    return "\n".join(lines)
