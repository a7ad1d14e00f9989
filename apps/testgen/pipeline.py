"""TestGenerator: a base model with a testgen adapter, writing candidate tests for functions and keeping
the ones that pass and add coverage in the sandbox.

    from peft_apps.apps.testgen import TestGenerator
    gen = TestGenerator.from_pretrained(None, "runs/testgen-lora")
    result = gen.generate(project=".", changed="origin/main..HEAD", n=4)
    result.as_dict()["counts"]            # functions, candidates, kept, drop reasons

Candidates per function: the first greedy, the others sampled (task.temperature, seeded), all decoded
over the function's prompt encoded once (the core's prefix planner).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from peft_apps.core.config import Recipe, run_recipe, validate_task
from peft_apps.core.data import Record, render_prompt
from peft_apps.core.engine import Engine, GenerationOptions, PrefixTree
from peft_apps.core.engine.remote import open_engine
from peft_apps.core.prompts import render

from .task import TestGenTask
from .check import Checker
from .generate import (GenerationResult, Target, changed_targets, check_candidates, kept_modules, load_candidates,
                       targets_in_files)


class TestGenerator:
    __test__ = False  # not a pytest class

    def __init__(self, engine: Engine | None, recipe: Recipe):
        self.engine = engine
        self.recipe = recipe
        self.task: TestGenTask = validate_task(recipe, TestGenTask)

    @classmethod
    def from_pretrained(cls, base: str | None, adapter: str | Path, endpoint: str | None = None,
                        model: str | None = None, api_key_env: str | None = None) -> "TestGenerator":
        """`endpoint`: a server's URL to generate on instead of loading the model here (`model`: its name for
        the adapter, default the run folder's name; `api_key_env`: the variable holding the API key)."""
        recipe = run_recipe(adapter, "testgen")  # (first: a folder that is no run's is named before loading)
        return cls(open_engine(base, adapter, endpoint, model, api_key_env), recipe)

    def _ids(self, lang: str, code_prompt: str) -> list[int]:
        msgs = Record.simple("", render("testgen", lang, prompt=code_prompt, lang=lang), "",
                             system=self.recipe.data.system_prompt).prompt
        return self.engine.tokenizer(render_prompt(self.engine.tokenizer, msgs), add_special_tokens=False)["input_ids"]

    def candidates(self, targets: Sequence[Target], n: int | None = None, seed: int = 0) -> list[list[str]]:
        """`n` candidate test bodies per target: one greedy, n - 1 sampled."""
        from peft_apps.core.loop import generation_options

        n = n or self.task.candidates
        ids = [self._ids("python", t.prompt) for t in targets]
        tree = PrefixTree(self.engine)
        tree.roots({i: x[:-1] for i, x in enumerate(ids)})
        base = replace(generation_options(self.recipe), max_new_tokens=self.task.max_new_tokens)
        greedy = tree.generate([(((i,)), x) for i, x in enumerate(ids)], options=replace(base, do_sample=False))
        out = [[g] for g in greedy]
        if n > 1:
            calls = [(((i,)), x) for i, x in enumerate(ids) for _ in range(n - 1)]
            sampled = tree.generate(calls, options=replace(base, do_sample=True, temperature=self.task.temperature,
                                                           row_seeds=GenerationOptions.spread_seeds(seed, len(calls))))
            for j, text in enumerate(sampled):
                out[j // (n - 1)].append(text)
        return out

    def complete(self, records: Sequence[Record]) -> list[str]:
        from peft_apps.core.loop import generation_options

        o = replace(generation_options(self.recipe), max_new_tokens=self.task.max_new_tokens)
        return self.engine.chat([r.prompt for r in records], options=o)

    def generate(self, project: str | Path = ".", paths: Sequence[str] = (), changed: str | None = None,
                 n: int | None = None, candidates_file: str | Path | None = None, workers: int | None = None,
                 progress: Callable[[str, int], None] | None = None) -> GenerationResult:
        return run(self, Path(project), paths, changed, n, candidates_file, workers, progress, self.task)


def run(generator: TestGenerator | None, project: Path, paths: Sequence[str], changed: str | None, n: int | None,
        candidates_file: str | Path | None, workers: int | None, progress, task: TestGenTask) -> GenerationResult:
    """Targets -> candidates (model or file) -> sandbox verdicts -> keep/drop -> the files to write."""
    from peft_apps.core.errors import UserError

    project = project.resolve()
    if not project.is_dir():
        raise UserError(f"--project {project}: not a folder")
    result = GenerationResult()
    targets = changed_targets(project, changed, result.problems) if changed else []
    targets += targets_in_files(list(paths), project, result.problems)
    seen, unique = set(), []
    for t in targets:
        if t.id not in seen:
            seen.add(t.id)
            unique.append(t)
    targets = unique
    if not targets:
        return result
    if candidates_file is not None:
        texts = load_candidates(Path(candidates_file), targets)
    elif generator is not None and generator.engine is not None:
        if progress:
            progress(f"generating {n or task.candidates} candidates for {len(targets)} function(s)", 0)
        texts = generator.candidates(targets, n)
    else:
        raise UserError("no adapter and no --candidates file: nothing to write tests with")
    checker = Checker(project, task.sandbox.limits())
    result.isolated = checker.sandbox.isolated
    total = sum(len(x) for x in texts)
    if progress:
        progress(f"checking {total} candidate(s) in the sandbox", total)
    results = check_candidates(checker, targets, texts, workers or task.workers or None,
                               (lambda: progress("", -1)) if progress else None)
    result.functions = results
    result.baseline_note = checker.baseline_note
    result.written = kept_modules(project, targets, results)
    return result
