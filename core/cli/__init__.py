"""`peft-apps` command line. Thin: each command resolves its app and calls the core or the app.

torch, transformers and peft are imported inside the commands that need them, so `--help` and
`peft-apps apps` answer at once. A `UserError` prints as one red line plus a hint, exit code 2.

One module per command group; this file registers their commands on the one typer app, in the order
`peft-apps --help` lists them, and runs it:

    common.py    the app, consoles, help strings, recipe and output-folder checks, global options
    train.py     train
    evaluate.py  eval, predict, score
    convert.py   convert, inspect
    serve.py     serve
    export.py    merge, export
    methods.py   methods, sweep
    demo.py      apps, tiny-model, demo
"""

from __future__ import annotations

import typer

from peft_apps.core.errors import UserError

from . import convert, demo, evaluate, export, methods, serve, train
from .common import app, console

app.command("apps")(demo.apps_cmd)
app.command("train")(train.train_cmd)
app.command("inspect")(convert.inspect_cmd)
app.command("eval")(evaluate.eval_cmd)
app.command("predict")(evaluate.predict_cmd)
app.command("convert")(convert.convert_cmd)
app.command("score")(evaluate.score_cmd)
app.command("serve")(serve.serve_cmd)
app.command("merge")(export.merge_cmd)
app.command("export")(export.export_cmd)
app.command("methods")(methods.methods_cmd)
app.command("sweep")(methods.sweep_cmd)
app.command("tiny-model")(demo.tiny_model_cmd)
app.command("demo")(demo.demo_cmd)


def _mount_app_commands() -> None:
    """Apps with their own commands (e.g. `peft-apps testgen check`) appear as sub-commands."""
    try:
        from peft_apps.core.registry import list_apps

        for name, a in list_apps().items():
            if a.cli is not None:
                app.add_typer(a.cli(), name=name, help=f"{name}-specific commands")
    except UserError:  # pragma: no cover
        pass


def run_typer(typer_app: typer.Typer, argv: list[str] | None, prog_name: str) -> int:
    """Run a typer app as a console script: a UserError prints as one message (no traceback), exit 2."""
    try:
        typer_app(args=argv, prog_name=prog_name)  # typer/click report usage errors themselves
    except UserError as e:
        from rich.markup import escape  # a message's own brackets (".[export]", [a, b]) are text, not markup

        console.print(f"[bold red]error:[/] {escape(str(e.args[0]))}", highlight=False, soft_wrap=True)
        if e.hint:
            console.print(f"[dim]hint:[/] {escape(e.hint)}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def main(argv: list[str] | None = None) -> int:
    _mount_app_commands()
    return run_typer(app, argv, "peft-apps")
