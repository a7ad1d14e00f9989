"""What every command shares: the typer app, the consoles, the help strings, the recipe and output-folder
checks, the global options.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from peft_apps.core.errors import UserError

console = Console(stderr=True)
out_console = Console()

app = typer.Typer(
    name="peft-apps",
    help="Turn open LLMs into task specialists with QLoRA/LoRA and friends. "
         "Recipes are YAML; override any key with key=value (e.g. train.lr=1e-4).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]}, rich_markup_mode="markdown",
)


APP_HELP = "a registered app (`peft-apps apps` lists them)"
OVERRIDES_HELP = "recipe overrides, e.g. train.lr=1e-4 data.train=my.jsonl (README: Recipes)"
ADAPTER_HELP = "a run folder from `peft-apps train` (adapter_config.json, recipe.yaml, ...; README: What a training run leaves)"


def _out_folder(out: Path, force: bool, what: str = "--out") -> None:
    """A folder output: refuse a file there, and a folder with files in it unless `force` (README: one overwrite
    rule)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{what} {out} is a file; give a folder path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"{what} {out} already holds files", hint="pass --force to overwrite them, or choose another folder")


def _app(name: str):
    from peft_apps.core.registry import get_app

    return get_app(name)


def _recipe(app_name: str, recipe: str | None, overrides: list[str] | None, adapter: str | None = None,
            subtask: str | None = None, name_run: bool = False):
    from peft_apps.core.config import load_recipe

    a = _app(app_name)
    if subtask is not None:
        if not a.subtasks:
            raise UserError(f"app {app_name!r} has no sub-tasks: --task/--target does not apply")
        if subtask not in a.subtasks:
            raise UserError(f"--task/--target must be one of {', '.join(a.subtasks)} for {app_name}, got {subtask!r}")
        overrides = [*(overrides or []), f"task.{a.subtask_key}={subtask}"]
        if name_run and not any(o.startswith("train.output_dir=") for o in overrides):
            r = load_recipe(a.recipe_path(recipe), overrides, app=app_name)
            overrides.append(f"train.output_dir={r.output_dir()}-{subtask}")
    if adapter is not None:
        from peft_apps.core.engine.loading import check_run_folder  # (imports torch: only where a model is used)

        check_run_folder(adapter, app_name)
    if adapter is not None and (Path(adapter) / "recipe.yaml").is_file():
        from peft_apps.core.config import wrong_app

        trained = load_recipe(Path(adapter) / "recipe.yaml")
        if trained.app != app_name:
            raise wrong_app(adapter, trained.app, app_name)
        if recipe is None:
            return a, load_recipe(Path(adapter) / "recipe.yaml", overrides)
    return a, load_recipe(a.recipe_path(recipe), overrides, app=app_name)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("peft-apps")
        except PackageNotFoundError:  # pragma: no cover - run from a checkout that was never installed
            v = "unknown (not installed)"
        typer.echo(f"peft-apps {v}")
        raise typer.Exit()


@app.callback()
def _options(strict: bool = typer.Option(False, "--strict", help="warnings (empty inputs, skipped records, an "
                                                               "adapter of another app) are errors: for CI"),
             version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                          help="print the version and exit")) -> None:
    from peft_apps.core.errors import set_strict

    set_strict(strict)


def _prepare() -> None:
    from peft_apps.core.quiet import quiet

    quiet()
