"""`autore` command line: `autore extract`, plus `autore train` / `autore eval` shortcuts."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from peft_apps.core.errors import UserError
from peft_apps.core.endpoint import API_KEY_ENV_HELP, ENDPOINT_HELP, MODEL_HELP, endpoint_options

from .inputs import read_inputs

console = Console(stderr=True)
cli = typer.Typer(name="autore", help="Document-level relation extraction (AutoRE: Relation -> Head -> Facts).",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]}, rich_markup_mode="markdown")


def _adapters(adapter: str | None, adapters: str | None) -> str | dict[str, str]:
    if adapter and adapters:
        raise UserError("give --adapter (one for all stages) or --adapters (one per stage), not both")
    if adapters:
        out = {}
        for part in adapters.split(","):
            if "=" not in part:
                raise UserError(f"--adapters expects stage=DIR pairs separated by commas, got {part!r}")
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
        return out
    if adapter:
        return adapter
    from peft_apps.core.config import load_recipe
    from peft_apps.core.registry import get_app

    a = get_app("autore")
    default = load_recipe(a.recipe_path(None), app="autore").output_dir()
    if not (default / "adapter_config.json").is_file():
        raise UserError(f"no adapter given and the default one ({default}) does not exist",
                        hint="train one (`autore train`, or `peft-apps demo autore` for a smoke run) and pass "
                             "--adapter DIR, or --adapters relation=DIR,head=DIR,facts=DIR")
    return str(default)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


@cli.command("extract")
def extract_cmd(
    inputs: list[str] = typer.Argument(..., metavar="INPUT", help="texts, text files, DocRED .json files, "
                                       "folders of them, or - for stdin (README: autore)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help=ENDPOINT_HELP),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", metavar="VAR", help=API_KEY_ENV_HELP),
    adapter: Optional[str] = typer.Option(None, "--adapter", "-a", help="one autore run folder for all three "
                                          "stages (recipe qlora)"),
    adapters: Optional[str] = typer.Option(None, "--adapters", help="relation=DIR,head=DIR,facts=DIR"),
    fmt: str = typer.Option("table", "--format", "-f", help="table, json or jsonl"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the results here"),
    no_inverse: bool = typer.Option(False, "--no-inverse", help="do not add inverse relations"),
    force: bool = typer.Option(False, "--force", help="overwrite --out if it exists"),
    strict: bool = typer.Option(False, "--strict", help="warnings (empty inputs, legacy encodings) are errors"),
) -> None:
    """Extract (head, relation, tail) triples from documents (JSONL rows are what `peft-apps score` reads)."""
    from peft_apps.core.errors import set_strict
    from peft_apps.core.io import atomic_write, check_output

    set_strict(strict)
    if fmt not in ("table", "json", "jsonl"):
        raise UserError(f"--format must be table, json or jsonl, got {fmt!r}")
    if out:
        check_output(out, force, "--out")
    items = read_inputs(inputs)
    ad = _adapters(adapter, adapters)
    from peft_apps.core.quiet import quiet

    quiet()
    from rich.progress import Progress

    from .pipeline import AutoRE

    ep = endpoint_options(endpoint, model, api_key_env)
    pipe = AutoRE.from_pretrained(None if ep else model, ad, endpoint=ep, inverse=not no_inverse)
    results = []
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task("extracting", total=len(items))
        for name, item in items:
            r = pipe.extract(item)
            results.append((name, r))
            prog.advance(task)
    if fmt == "table":
        import io

        from rich.table import Table

        target = Console(file=io.StringIO(), width=160) if out else Console()
        for name, r in results:
            t = Table(title=f"{name}: {len(r.triples)} triples", title_justify="left")
            for c in ("head", "relation", "tail", "source"):
                t.add_column(c)
            for x in r.triples:
                t.add_row(x["head"], x["relation"], x["tail"], x["source"])
            target.print(t)
            if r.stats:
                target.print("stats: " + ", ".join(f"{k}={v}" for k, v in sorted(r.stats.items())), highlight=False)
        if out:
            atomic_write(out, target.file.getvalue())
            console.print(f"{_n(len(results), 'document')} -> {out}")
        _warning_count()
        return
    # the predictions format every command shares: id, the raw model text `score` parses, then the triples
    rows = [{"id": name, "output": r.model_text(), **r.as_dict()} for name, r in results]
    if fmt == "json":
        # one object for the run: the documents plus what happened on the way, counted
        from peft_apps.core.errors import issued_warnings

        given = issued_warnings()
        run = {"documents": rows,
               "counts": {"documents": len(rows), "empty_documents": sum(1 for _, it in items if not _has_text(it)),
                          "triples": sum(len(r.triples) for _, r in results)},
               "warnings": len(given), "warning_messages": given[:20]}
        text = json.dumps(run, indent=2, ensure_ascii=False)
    else:
        text = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows)
    if out:
        atomic_write(out, text)
        console.print(f"{_n(len(rows), 'document')} -> {out}")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    _warning_count()


def _has_text(item) -> bool:
    return bool(item.strip()) if isinstance(item, str) else bool(item.get("sents"))


def _warning_count() -> None:
    from peft_apps.core.errors import issued_warnings

    n = len(issued_warnings())
    if n:
        console.print(f"[yellow]{_n(n, 'warning')}[/] (above); --strict makes them errors")


@cli.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train_cmd(ctx: typer.Context) -> None:
    """Shortcut for `peft-apps train autore ...`."""
    from peft_apps.core.cli import main

    raise typer.Exit(main(["train", "autore", *ctx.args]))


@cli.command("eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def eval_cmd(ctx: typer.Context) -> None:
    """Shortcut for `peft-apps eval autore ...`."""
    from peft_apps.core.cli import main

    raise typer.Exit(main(["eval", "autore", *ctx.args]))


def main(argv: list[str] | None = None) -> int:
    from peft_apps.core.cli import run_typer

    return run_typer(cli, argv, "autore")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
