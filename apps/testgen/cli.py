"""`peft-apps testgen generate` and `peft-apps testgen check`: tests for changed or named functions, kept
only when they pass and add coverage in the sandbox; the sandbox's verdict on one test file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from peft_apps.core.errors import UserError
from peft_apps.core.endpoint import API_KEY_ENV_HELP, ENDPOINT_HELP, MODEL_HELP, endpoint_options

console = Console(stderr=True)
cli = typer.Typer(help="Unit-test generation commands.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False, context_settings={"help_option_names": ["-h", "--help"]}, rich_markup_mode="markdown")


def _task(adapter: Optional[str], overrides: list[str]):
    from peft_apps.core.config import Recipe, load_recipe

    from .app import TestGenTask

    if adapter:
        from peft_apps.core.config import run_recipe

        run_recipe(adapter, "testgen")  # a testgen run, or one clear message (before any model loads)
        rf = Path(adapter) / "recipe.yaml"
        recipe = load_recipe(rf, overrides) if rf.is_file() else Recipe(app="testgen")
    else:
        from peft_apps.core.registry import get_app

        recipe = load_recipe(get_app("testgen").recipe_path(None), overrides)
    from peft_apps.core.config import validate_task

    return recipe, validate_task(recipe, TestGenTask)


def _split_items(items: list[str] | None) -> tuple[list[str], list[str]]:
    """Positional items: KEY=VALUE recipe overrides (a bare task key such as sandbox.timeout_s=10 means
    task.sandbox.timeout_s) and the rest, paths (file.py, file.py::name)."""
    from peft_apps.core.config import Recipe

    sections = tuple(f"{name}." for name in Recipe.model_fields)
    paths, overrides = [], []
    for item in items or []:
        key, sep, _ = item.partition("=")
        if sep and "/" not in key and "::" not in key and not key.endswith(".py"):
            overrides.append(item if key.startswith(sections) else f"task.{item}")
        else:
            paths.append(item)
    return paths, overrides


def _candidate_targets(path: Path) -> list[str]:
    """The targets a --candidates file names, in order of first appearance (its lines say what they test)."""
    from peft_apps.core.data import read_jsonl

    seen: dict[str, None] = {}
    for n, row in read_jsonl(path):
        if not isinstance(row.get("target"), str):
            raise UserError(f"{path}, line {n}: needs a string field 'target' (file.py::name)")
        seen.setdefault(row["target"], None)
    return list(seen)


def _warn_isolation(isolated: bool) -> None:
    if not isolated:
        from .sandbox import bwrap_works

        console.print(f"[bold red]WARNING: generated tests ran WITHOUT isolation[/] ({bwrap_works()[1]}): network "
                      f"and filesystem were reachable; only the resource limits and timeout applied.")


@cli.command("check")
def check_cmd(
    test_file: Path = typer.Argument(..., metavar="TEST_FILE", help="the pytest file to judge (test_*.py)"),
    overrides: Optional[list[str]] = typer.Argument(None, metavar="KEY=VALUE",
                                                    help="recipe overrides, e.g. task.sandbox.memory_mb=1024 "
                                                         "(README: testgen)"),
    project: Path = typer.Option(Path("."), "--project", "-p", help="the project the test belongs to"),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0.1, help="wall-clock limit in seconds"),
) -> None:
    """Run one test file in the sandbox and print the verdict as JSON: status (keep/drop), reason, duration,
    coverage gain over the project's existing tests (the verdict `testgen generate` applies). Exit code 0
    for keep, 1 for drop."""
    from .check import Checker

    project = project.resolve()
    if not project.is_dir():
        raise UserError(f"--project {project}: not a folder")
    if not test_file.is_file():
        raise UserError(f"{test_file}: no such file")
    if test_file.suffix != ".py":
        raise UserError(f"{test_file}: not a Python file (.py)", hint="pytest collects test_*.py files")
    stray, overrides = _split_items(overrides)
    if stray:
        raise UserError(f"{stray[0]!r} is not of the form key=value", hint="check judges one TEST_FILE; what follows "
                                                                            "it are recipe overrides")
    _, task = _task(None, overrides)
    limits = task.sandbox.limits()
    if timeout:
        limits.timeout_s = timeout
    src = test_file.read_text(encoding="utf-8", errors="replace")
    try:
        rel = test_file.resolve().relative_to(project).as_posix()
        ignore = [rel]
    except ValueError:  # a file from elsewhere: checked as a new test in the project's tests folder
        from .generate import tests_dir

        rel = (tests_dir(project) / test_file.name).relative_to(project).as_posix()
        ignore = [rel] if (project / rel).exists() else []
    checker = Checker(project, limits, ignore=ignore)
    v = checker.check(rel, src)
    _warn_isolation(v.isolated)
    out = v.as_dict()
    out["test_file"] = rel
    if checker.baseline_note:
        out["baseline_note"] = checker.baseline_note
    print(json.dumps(out, indent=2))
    if v.status != "keep":
        raise typer.Exit(1)


@cli.command("generate")
def generate_cmd(
    items: Optional[list[str]] = typer.Argument(None, metavar="PATH | KEY=VALUE",
                                                help="what to write tests for: file.py (its functions), "
                                                     "file.py::function or file.py::Class.method; and recipe "
                                                     "overrides, e.g. task.sandbox.timeout_s=10 (README: testgen)"),
    changed: Optional[str] = typer.Option(None, "--changed", help="functions changed in git range BASE..HEAD, or 'staged'"),
    project: Path = typer.Option(Path("."), "--project", "-p", help="the project (a git work tree for --changed)"),
    adapter: Optional[str] = typer.Option(None, "--adapter", "-a", help="a testgen run folder from `peft-apps "
                                          "train testgen`"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help=ENDPOINT_HELP),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", metavar="VAR", help=API_KEY_ENV_HELP),
    n: Optional[int] = typer.Option(None, "--n", min=1, help="candidates per function (default: task.candidates, 4)"),
    candidates: Optional[Path] = typer.Option(None, "--candidates", help='JSONL of {"target", "test"}: check '
                                              'these instead of generating'),
    write: bool = typer.Option(False, "--write", help="write the kept tests into the test tree"),
    patch_out: Optional[Path] = typer.Option(None, "--patch", help="write the kept tests as a patch file"),
    check: bool = typer.Option(False, "--check", help="write nothing; exit 1 when a function gets no kept test"),
    report: Optional[Path] = typer.Option(None, "--out", "-o", "--report", help="JSON report: every candidate's "
                                          "verdict"),
    force: bool = typer.Option(False, "--force", help="overwrite --out or --patch if it exists"),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="sandbox runs in parallel (default: cores)"),
) -> None:
    """Write tests for changed or named Python functions: n candidates each, run in the sandbox, keep the
    ones that pass and add line or branch coverage, say why each other one was dropped."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .generate import patch, write as write_files
    from .pipeline import TestGenerator, run

    from peft_apps.core.io import atomic_write, check_output

    paths, overrides = _split_items(items)
    if sum([write, patch_out is not None, check]) > 1:
        raise UserError("choose one of --write, --patch and --check")
    if candidates and not candidates.is_file():
        raise UserError(f"--candidates {candidates}: " + ("a folder; give the JSONL file" if candidates.is_dir()
                                                         else "no such file"))
    if candidates and not paths and not changed:
        paths = _candidate_targets(candidates)  # each line names its target
    if not paths and not changed:
        raise UserError("nothing to test", hint="name files or file.py::function, or pass --changed BASE..HEAD")
    if adapter and candidates:
        raise UserError("give --adapter (generate candidates) or --candidates (check given ones), not both")
    if not adapter and not candidates and not (model and not endpoint):
        raise UserError("no adapter given", hint="train one (`peft-apps train testgen`, or `peft-apps demo testgen`) "
                                                 "and pass --adapter DIR, or check hand-written tests with --candidates "
                                                 "(--model BASE alone: the untrained base, zero-shot)")
    for p, what in ((patch_out, "--patch"), (report, "--out")):
        if p is not None:
            check_output(p, force, what)
    recipe, task = _task(adapter, overrides)
    generator = None
    if adapter:
        ep = endpoint_options(endpoint, model, api_key_env)
        generator = TestGenerator.from_pretrained(None if ep else model, adapter, endpoint=ep)
        generator.task = task
    elif model and not candidates:  # the base model alone, zero-shot (what training starts from)
        from peft_apps.core.engine import Engine

        generator = TestGenerator(Engine.from_pretrained(model), recipe)
        generator.task = task

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        state = {"id": None}

        def progress(text: str, total: int) -> None:
            if total == -1:
                bar.advance(state["id"])
            elif total == 0:
                console.print(text)
            else:
                state["id"] = bar.add_task(text, total=total)

        result = run(generator, project, list(paths or []), changed, n, candidates, workers, progress, task)
    _warn_isolation(result.isolated)
    for p in result.problems:
        console.print(f"[yellow]skipped:[/] {p}")
    if result.baseline_note:
        console.print(f"[yellow]note:[/] {result.baseline_note}")
    if not result.functions:
        console.print("no functions to test" + (f" in {changed}" if changed else ""))
    for f in result.functions:
        dropped = [c for c in f.candidates if c.verdict.status != "keep"]
        why = ", ".join(f"{c.verdict.reason}" for c in dropped)
        console.print(f"{f.target}: kept {len(f.kept)} of {len(f.candidates)}" + (f" (dropped: {why})" if why else ""))
    d = result.as_dict()
    if report:
        atomic_write(report, json.dumps(d, indent=2))
        console.print(f"report -> {report}")
    proj = project.resolve()
    if write and result.written:
        write_files(proj, result.written)
        console.print(f"wrote {', '.join(sorted(result.written))}")
    elif patch_out is not None:
        atomic_write(patch_out, patch(proj, result.written))
        console.print(f"patch -> {patch_out} ({len(result.written)} file(s))")
    c = d["counts"]
    console.print(f"{c['kept']} test(s) kept for {c['functions_with_kept_tests']} of {c['functions']} function(s)")
    if check and c["functions_with_kept_tests"] < c["functions"]:
        sys.exit(1)
