"""`peft-apps methods` and `peft-apps sweep`: the PEFT methods by name, and each one trained on one recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import APP_HELP, OVERRIDES_HELP, _app, console, out_console


def methods_cmd(
    markdown: bool = typer.Option(False, "--markdown", help="the README's method table (markdown)"),
) -> None:
    """The PEFT methods `peft.method` names: where each comes from, 4-bit bases, merging, shared-prefix serving."""
    from peft_apps.core.methods import method_table

    if markdown:
        print(method_table())
        return
    from rich.markup import escape
    from rich.table import Table

    from peft_apps.core.methods import METHODS

    t = Table("method", "source", "4-bit base", "merges", "shared prefix", "what it is", show_lines=False)
    yes = lambda v: "yes" if v else "no"  # noqa: E731
    for name in sorted(METHODS):
        m = METHODS[name]
        t.add_row(name, m.source, yes(m.four_bit), yes(m.merges), yes(m.shared_prefix),
                  (f"[red]not usable: {escape(m.broken)}[/] " if m.broken else "") + escape(m.summary))
    out_console.print(t)


def sweep_cmd(
    app_name: str = typer.Argument(..., metavar="APP", help=APP_HELP),
    overrides: Optional[list[str]] = typer.Argument(None, metavar="KEY=VALUE", help=OVERRIDES_HELP),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="recipe name or .yaml path"),
    methods: str = typer.Option(..., "--methods", help="comma-separated PEFT methods (`peft-apps methods`)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="sweep folder (default: runs/APP-RECIPE-sweep)"),
    force: bool = typer.Option(False, "--force", help="start over: forget the methods a previous sweep finished"),
) -> None:
    """Train and evaluate each method with the same recipe, data and budget; compare the headline metric,
    trainable parameters, peak memory, tokens/s, adapter size and time (sweep.json, sweep.md, sweep.png).
    Run again, it goes on where it stopped."""
    from peft_apps.core.sweep import parse_methods, sweep

    names = parse_methods(methods)
    _app(app_name)
    folder, rows = sweep(app_name, recipe or _app(app_name).default_recipe, names, list(overrides or []), out,
                         force, console)
    console.print((folder / "sweep.md").read_text(), highlight=False, markup=False, soft_wrap=True)
    console.print(f"results: {folder / 'sweep.json'}, {folder / 'sweep.md'}, {folder / 'sweep.png'}")
    if not any(r["status"] == "ok" for r in rows):
        raise typer.Exit(1)
