"""The testgen app's declarations: records in (`data.py`), Java and Python prompts (prompts/testgen/), the
parse of model text into a test, and the metrics: the metric module (syntax validity, CodeBLEU) plus, for
records that name their project, execution in the sandbox (pass rate, focal-function coverage)."""

from __future__ import annotations

import json
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

from .data import read_records
from .task import SandboxSettings, TestGenTask  # noqa: F401  (defined in task.py)


class GenerateRequest(BaseModel):
    """`POST /v1/apps/testgen/generate`: a Python module's source in, candidate tests for its functions out.
    Checking them (the sandbox) stays with the caller: `peft-apps testgen generate --candidates FILE` takes
    the candidates as JSONL of {"target", "test"}."""
    model_config = ConfigDict(extra="forbid")
    source: str
    path: str = Field(default="module.py", description="the module's path in its project (its import name follows)")
    functions: list[str] | None = Field(default=None, description="names or Class.method; default: every public one")
    n: int | None = Field(default=None, ge=1, le=64, description="candidates per function (default: the recipe's)")
    seed: int = 0
    model: str | None = None  # the served testgen run; default: the only one


@dataclass
class TestGenApp(App):
    def render_task(self, lang: str, fields: dict[str, Any], where: str) -> str:
        return render(self.name, lang, where=where, **fields)

    def read(self, path: Path, recipe: Recipe, labelled: bool = True, prompts: bool = True) -> list[Record]:
        return read_records(Path(path), labelled, self.render_task, recipe.data.system_prompt)

    def from_text(self, text: str, id: str, recipe: Recipe) -> Record:
        """A code prompt given as text (ends with a test's signature); Java if it has a class body."""
        from .data import guess_lang

        lang = guess_lang({"prompt": text})
        return Record.simple(id, self.render_task(lang, {"prompt": text, "lang": lang}, f"input {id}"), "",
                             system=recipe.data.system_prompt, lang=lang, code_prompt=text)

    def inputs(self, items: list[str], recipe: Recipe) -> list[Record]:
        """`predict` takes record files (JSONL), Python files or `file.py::function` (a test is written
        for each named or top-level function), and code prompts as text."""
        out: list[Record] = []
        rest = []
        for item in items:
            path = Path(item.split("::")[0])
            if path.suffix == ".py" and path.is_file():
                from .generate import targets_in_files

                for t in targets_in_files([item], Path.cwd()):
                    out.append(Record.simple(t.id, self.render_task("python", {"prompt": t.prompt, "lang": "python"},
                                                                    t.id), "", system=recipe.data.system_prompt,
                                             lang="python", code_prompt=t.prompt))
            else:
                rest.append(item)
        return out + (App.inputs(self, rest, recipe) if rest else [])

    def serve_request(self):
        return GenerateRequest

    def serve(self, engine, runs: dict[str, Path], request: GenerateRequest) -> dict[str, Any]:
        """Candidates for each function of the module (one greedy, n - 1 sampled), each as the model's text
        and as the whole test module that would run."""
        import tempfile
        from pathlib import PurePosixPath

        from peft_apps.core.config import load_recipe

        from .generate import assemble, targets_in_files
        from .pipeline import TestGenerator

        rel = PurePosixPath(request.path)
        if rel.is_absolute() or ".." in rel.parts or rel.suffix != ".py":
            raise UserError(f"path {request.path!r}: give a relative path of a .py file, e.g. pkg/module.py")
        name = self.served_run(runs, request.model)
        generator = TestGenerator(engine([name]), load_recipe(runs[name] / "recipe.yaml"))
        with tempfile.TemporaryDirectory(prefix="peft-apps-serve-") as tmp:
            target_file = Path(tmp) / rel
            target_file.parent.mkdir(parents=True, exist_ok=True)
            target_file.write_text(request.source, encoding="utf-8")
            problems: list[str] = []
            items = [f"{rel}::{f}" for f in request.functions] if request.functions else [str(rel)]
            targets = targets_in_files(items, Path(tmp), problems)
        if problems:
            raise UserError("; ".join(p.replace(tmp, "") for p in problems))
        texts = generator.candidates(targets, request.n, request.seed) if targets else []
        return {"functions": [{"target": t.id, "candidates": [{"output": x, "test": assemble(t, x)} for x in xs]}
                              for t, xs in zip(targets, texts)]}

    def generate(self, pipeline, examples: list[Record], recipe: Recipe) -> list[str]:
        from peft_apps.core.loop import generation_options

        task = self.task(recipe)
        o = generation_options(recipe)
        o.max_new_tokens = task.max_new_tokens
        return pipeline.chat([ex.prompt for ex in examples], options=o)

    def parse(self, output: str, example: Record, task: Any, stats: Counter) -> str:
        from .units import clean, syntax_valid

        text = clean(output)
        if not text.strip():
            stats["empty output"] += 1
        elif not syntax_valid(example.meta.get("lang", "java"), example.meta.get("code_prompt", ""), output):
            stats["syntax error"] += 1
        return text

    def metrics(self, examples: list[Record], parsed: list[Any], task: Any) -> dict[str, Any]:
        m = self.load_metric().compute(predictions=list(parsed), references=[ex.completion for ex in examples],
                                       prompts=[ex.meta.get("code_prompt", "") for ex in examples],
                                       langs=[ex.meta.get("lang", "java") for ex in examples])
        runnable = [i for i, ex in enumerate(examples) if ex.meta.get("lang") == "python" and ex.meta.get("project")]
        if runnable and (task is None or task.execute):
            m.update(execution_metrics([examples[i] for i in runnable], [parsed[i] for i in runnable], task))
        return m

    def convert(self, source: Path, out: Path, **options: Any) -> dict[str, Any]:
        """A Python repository (a folder) -> mined focal/test pairs as JSONL records; a records file ->
        the chat records training sees. Either way a report of what was used and skipped."""
        from peft_apps.core.data import write_jsonl
        from peft_apps.core.io import atomic_write

        source, out = Path(source), Path(out)
        if source.is_dir():
            from .miner import mine

            mined = mine(source)
            target = out / "pairs.jsonl"
            out.mkdir(parents=True, exist_ok=True)
            write_jsonl(target, mined.records)
            report = {"source": str(source), "output": str(target), "counts": dict(mined.counts),
                      "problems": mined.problems}
            atomic_write(out / "report.json", json.dumps(report, indent=2))
            return report
        if not source.is_file():
            raise UserError(f"{source}: not found", hint="give a Python repository (folder) or a records file")
        from peft_apps.core.config import load_recipe

        recipe = load_recipe(self.recipe_path(None), app=self.name)
        records = self.read(source, recipe)
        target = out / "records.jsonl"
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl(target, [{"id": r.id, "lang": r.meta["lang"], "messages": r.prompt, "completion": r.completion}
                             for r in records])
        report = {"source": str(source), "output": str(target),
                  "records": dict(Counter(r.meta["lang"] for r in records))}
        atomic_write(out / "report.json", json.dumps(report, indent=2))
        return report

    def demo_inputs(self, recipe: Recipe, work_dir: Path) -> list[str]:
        """The bundled Java sample's first prompts."""
        return [str(self.data / "methods2test-sample.jsonl")]


def execution_metrics(examples: list[Record], tests: list[str], task: TestGenTask | None) -> dict[str, Any]:
    """Run each generated Python test in the sandbox, in its record's project: pass rate (a test with a
    syntax or import error fails), and the focal function's line and branch coverage by the passing tests
    (a failing test covers nothing), averaged over the records."""
    from .check import Checker
    from .units import python_unit

    task = task or TestGenTask()
    by_project: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        by_project.setdefault(ex.meta["project"], []).append(i)
    passed, line_cov, branch_cov = 0, [], []
    reasons: Counter = Counter()
    for project, idx in by_project.items():
        if not Path(project).is_dir():
            raise UserError(f"records name the project {project}, which is not a folder here",
                            hint="mine the pairs again where the project is (`peft-apps convert testgen REPO OUT`), "
                                 "or set task.execute=false")
        checker = Checker(Path(project), task.sandbox.limits())
        items = []
        for i in idx:
            ex = examples[i]
            src = python_unit(ex.meta["code_prompt"], tests[i], imports=ex.meta.get("test_imports"))
            items.append((_scratch_path(ex.meta.get("test_file", "tests/test_x.py")), src))
        verdicts = checker.check_many(items, task.workers or None)
        for i, v in zip(idx, verdicts):
            ex = examples[i]
            ok = v.reason in ("passes and adds coverage", "no coverage gain")  # the verdicts of a passing test
            reasons[v.reason if not ok else "passed"] += 1
            passed += ok
            if ok and v.covered is not None:
                a, b = ex.meta["focal_lines"]
                cov = v.covered.of_function(ex.meta["focal_file"], a, b)
            else:
                cov = {"line_coverage": 0.0, "branch_coverage": 0.0}
            if cov["line_coverage"] is not None:
                line_cov.append(cov["line_coverage"])
            if cov["branch_coverage"] is not None:
                branch_cov.append(cov["branch_coverage"])
    n = len(examples)
    return {"executed": n, "pass_rate": passed / n, "focal_line_coverage": sum(line_cov) / len(line_cov) if line_cov
            else None, "focal_branch_coverage": sum(branch_cov) / len(branch_cov) if branch_cov else None,
            "execution_outcomes": dict(reasons)}


def _scratch_path(test_file: str) -> str:
    """Where a generated test runs: beside the original test file, under a name of its own."""
    p = Path(test_file)
    return (p.parent / f"test_peft_apps_generated_{p.stem.removeprefix('test_')}.py").as_posix()
