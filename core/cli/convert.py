"""`peft-apps convert` and `peft-apps inspect`: source data into records, and records as the trainer sees them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from peft_apps.core.errors import UserError

from .common import APP_HELP, OVERRIDES_HELP, _app, _out_folder, _prepare, _recipe, out_console


def inspect_cmd(
    app_name: str = typer.Argument(..., metavar="APP", help=APP_HELP),
    overrides: Optional[list[str]] = typer.Argument(None, metavar="KEY=VALUE",
                                                    help=OVERRIDES_HELP),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="recipe name or .yaml path"),
    n: int = typer.Option(3, "-n", min=1, help="how many training records to show"),
    as_json: bool = typer.Option(False, "--json", help='one JSON object per line: {"id", "input_ids", "labels" '
                                 '(-100 where nothing is trained), "prompt", "completion", "truncated" (tokens '
                                 'cut), "dropped"}'),
    subtask: Optional[str] = typer.Option(None, "--task", "--target", "-t",
                                          help="the app's sub-task or target variant (see `peft-apps apps`)"),
) -> None:
    """Show the first training records exactly as the trainer will see them: after the chat template,
    tokenization and truncation, the trained tokens highlighted. Loads the tokenizer, not the model."""
    a, r = _recipe(app_name, recipe, overrides, subtask=subtask)
    _prepare()
    from peft_apps.core.inspect import inspect_records, render
    from peft_apps.core.modeling import load_tokenizer

    tokenizer = load_tokenizer(r.model)
    views = inspect_records(a, r, tokenizer, n)
    if as_json:
        for v in views:
            typer.echo(json.dumps({k: v[k] for k in ("id", "input_ids", "labels", "prompt", "completion",
                                                      "truncated", "dropped")}, ensure_ascii=False))
        return
    render(views, r, tokenizer, out_console)


def convert_cmd(
    app_name: str = typer.Argument(..., metavar="APP", help=APP_HELP),
    source: Path = typer.Argument(..., metavar="SOURCE", help="the app's source data: a file in its data format, "
                                  "or a folder for an app that mines one (README: each app's Data)"),
    out: Path = typer.Option(..., "--out", "-o", help="a folder: it gets the records (JSONL) and report.json"),
    force: bool = typer.Option(False, "--force", help="write into a folder that already holds files"),
) -> None:
    """Convert a source dataset into the app's training records.

    OUT is always a folder (made if missing): the records as JSONL and a report.json of what was read and
    skipped. A file there, or a folder holding files, is refused (the latter unless --force)."""
    if not source.exists():
        raise UserError(f"source not found: {source}")
    _out_folder(out, force)
    report = _app(app_name).convert(source, out)
    out_console.print_json(json.dumps(report))
