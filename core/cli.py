"""`peft-apps` command line. Thin: each command resolves its app and calls the core or the app.

torch, transformers and peft are imported inside the commands that need them, so `--help` and
`peft-apps apps` answer at once. A `UserError` prints as one red line plus a hint, exit code 2.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

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
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _app(name: str):
    from peft_apps.core.registry import get_app

    return get_app(name)


def _recipe(app_name: str, recipe: str | None, overrides: list[str] | None, adapter: str | None = None):
    from peft_apps.core.config import load_recipe

    a = _app(app_name)
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise UserError(f"{adapter} is not an adapter folder (no adapter_config.json)",
                        hint=f"train one with `peft-apps train {app_name}` and pass its output folder")
    if recipe is None and adapter and (Path(adapter) / "recipe.yaml").is_file():
        return a, load_recipe(Path(adapter) / "recipe.yaml", overrides)
    return a, load_recipe(a.recipe_path(recipe), overrides, app=app_name)


def _prepare() -> None:
    from peft_apps.core.quiet import quiet

    quiet()


@app.command("apps")
def apps_cmd() -> None:
    """List the registered apps and their recipes."""
    from rich.table import Table

    from peft_apps.core.registry import list_apps

    table = Table(title="peft-apps: registered apps")
    table.add_column("app", style="bold")
    table.add_column("recipes")
    table.add_column("what it does")
    for name, a in list_apps().items():
        recipes = ", ".join(f"[bold]{r}[/]" if r == a.default_recipe else r for r in a.recipes())
        table.add_row(name, recipes, a.summary)
    out_console.print(table)


@app.command("train")
def train_cmd(
    app_name: str = typer.Argument(..., metavar="APP", help="registered app (see `peft-apps apps`)"),
    overrides: Optional[list[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help="recipe overrides"),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="recipe name or .yaml path"),
    resume: bool = typer.Option(False, "--resume", help="continue from the last checkpoint in the output folder"),
    print_recipe: bool = typer.Option(False, "--print-recipe", help="print the resolved recipe and exit"),
) -> None:
    """Train an adapter for APP with a recipe."""
    a, r = _recipe(app_name, recipe, overrides)
    if print_recipe:
        typer.echo(r.to_yaml())
        return
    _prepare()
    from peft_apps.core.trainer import train

    console.print(f"[bold]train[/] {a.name} / {r.name}: {r.peft.method} on {r.model.base} -> {r.output_dir()}")
    res = train(r, a.training_records(r, "train"), a.training_records(r, "eval"), resume=resume, console=console)
    m = res.metrics
    console.print(f"[green]done[/] in {m['train_seconds']:.0f}s: loss {m.get('first_logged_loss', float('nan')):.3f}"
                  f" -> {m.get('last_logged_loss', float('nan')):.3f}, {m['useful_tokens_per_second']:,.0f} tokens/s")
    console.print(f"adapter: {res.output_dir}  (metrics.json, loss.png, recipe.yaml, tensorboard/)")


@app.command("eval")
def eval_cmd(
    app_name: str = typer.Argument(..., metavar="APP"),
    overrides: Optional[list[str]] = typer.Argument(None, metavar="[KEY=VALUE]..."),
    adapter: str = typer.Option(..., "--adapter", "-a", help="adapter folder from `peft-apps train`"),
    split: str = typer.Option("eval", "--split", "-s", help="eval or train"),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="default: the adapter's recipe.yaml"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="report folder (default: the adapter folder)"),
) -> None:
    """Evaluate an adapter: metrics as JSON, a markdown report and charts."""
    a, r = _recipe(app_name, recipe, overrides, adapter)
    if split not in ("eval", "train"):
        raise UserError(f"--split must be eval or train, got {split!r}")
    _prepare()
    from peft_apps.core.report import write_eval_report

    out_dir = out or Path(adapter)
    t0 = time.perf_counter()
    metrics = a.evaluate(adapter, r, split, out_dir)
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    files = write_eval_report(out_dir, f"{a.name} evaluation ({split})", metrics)
    _print_scalars(metrics)
    console.print("reports: " + ", ".join(str(p) for p in files.values()))


def _print_scalars(metrics: dict) -> None:
    from rich.table import Table

    t = Table(show_header=True)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    out_console.print(t)


@app.command("predict")
def predict_cmd(
    app_name: str = typer.Argument(..., metavar="APP"),
    inputs: list[str] = typer.Argument(..., metavar="INPUT...", help="input files or texts (app-specific)"),
    adapter: str = typer.Option(..., "--adapter", "-a"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="base model (default: the adapter's)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write JSONL here instead of stdout"),
) -> None:
    """Run an adapter on inputs; prints JSONL ({"id", "output"})."""
    a, r = _recipe(app_name, None, None, adapter)
    _prepare()
    results = a.predict(adapter, inputs, r, model=model)
    lines = [json.dumps(x, ensure_ascii=False) for x in results]
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n", encoding="utf-8")
        console.print(f"{len(lines)} predictions -> {out}")
    else:
        for line in lines:
            out_console.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command("convert")
def convert_cmd(
    app_name: str = typer.Argument(..., metavar="APP"),
    source: Path = typer.Argument(..., help="the app's source data file"),
    out: Path = typer.Argument(..., help="output file or folder"),
) -> None:
    """Convert a source dataset into the app's training records."""
    report = _app(app_name).convert(source, out)
    out_console.print_json(json.dumps(report))


@app.command("score")
def score_cmd(
    app_name: str = typer.Argument(..., metavar="APP"),
    gold: Path = typer.Option(..., "--gold", help="gold file (the app's format)"),
    pred: Path = typer.Option(..., "--pred", help='JSONL of {"id", "output"} (raw model text)'),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the metrics JSON here"),
    train: Optional[Path] = typer.Option(None, "--train", help="training data, for metrics that need it "
                                                                 "(e.g. scores that ignore facts seen in training)"),
) -> None:
    """Score predictions against gold data without loading a model."""
    a = _app(app_name)
    metrics = a.score(gold, pred, train=train) if train else a.score(gold, pred)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
        console.print(f"metrics -> {out}")
    _print_scalars(metrics)


@app.command("merge")
def merge_cmd(
    adapter: str = typer.Option(..., "--adapter", "-a", help="adapter folder"),
    out: Path = typer.Argument(..., help="folder for the merged model"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="base model (default: the adapter's)"),
) -> None:
    """Merge an adapter into a standalone model (4-bit bases: into the dequantized weights)."""
    _prepare()
    from peft_apps.core.merge import merge_adapter

    path = merge_adapter(adapter, out, model)
    console.print(f"merged model -> {path}")


@app.command("tiny-model")
def tiny_model_cmd(
    out: Path = typer.Argument(..., help="output folder"),
    size: str = typer.Option("tiny", "--size", help="tiny (tests, demo), small (~32M params), 1b or 8b (GPU "
                                                     "benchmark shapes)"),
    family: str = typer.Option("llama", "--family", help="architecture: llama, qwen2, qwen3, mistral, gemma2, "
                                                         "phi3, gpt-neox, gpt2"),
) -> None:
    """Build a model of a common architecture + tokenizer offline (random weights), in HF format."""
    _prepare()
    from peft_apps.core.tiny import build_tiny_model

    path = build_tiny_model(out, size=size, family=family)
    info = json.loads((path / "peft_apps_tiny.json").read_text())
    console.print(f"{size} model ({info['parameters']:,} parameters) -> {path}")


@app.command("demo")
def demo_cmd(
    app_name: Optional[str] = typer.Argument(None, metavar="[APP]", help="default: sft"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output folder (default: runs/APP-demo)"),
) -> None:
    """Train, evaluate and use an adapter on the tiny offline model and bundled real samples (under a minute)."""
    from peft_apps.core.registry import list_apps

    name = app_name or ("sft" if "sft" in list_apps() else next(iter(list_apps())))
    a = _app(name)
    if "demo" not in a.recipes():
        raise UserError(f"app {name!r} has no demo recipe", hint=f"apps with one: "
                        + ", ".join(n for n, x in list_apps().items() if "demo" in x.recipes()))
    overrides = [f"train.output_dir={out}"] if out else []
    a, r = _recipe(name, "demo", overrides)
    _prepare()
    from peft_apps.core.report import write_eval_report
    from peft_apps.core.trainer import train

    console.rule(f"[bold]peft-apps demo: {name}")
    console.print("[yellow]This is a smoke run on a tiny, randomly initialised model built offline:[/] it shows the "
                  "pipeline working end to end, not useful quality. For real results pick a real base model, e.g. "
                  f"`peft-apps train {name} model.base=Qwen/Qwen2.5-1.5B-Instruct` on a GPU.")
    res = train(r, a.training_records(r, "train"), a.training_records(r, "eval"), console=console)
    metrics = a.evaluate(str(res.output_dir), r, "eval", res.output_dir)
    files = write_eval_report(res.output_dir, f"{name} demo evaluation", metrics)
    _print_scalars({k: v for k, v in metrics.items() if k in ("exact_match", "macro_f1", "n", "f1", "precision",
                                                              "recall")})
    pred_file = res.output_dir / "demo_predictions.jsonl"
    inputs = a.demo_inputs(r, res.output_dir)
    preds = a.predict(str(res.output_dir), inputs, r) if inputs else []
    pred_file.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds), encoding="utf-8")
    for p in preds[:3]:
        console.print(f"  predict: {json.dumps(p, ensure_ascii=False)}", highlight=False)
    console.rule("artefacts")
    for label, path in [("adapter", res.output_dir / "adapter_model.safetensors"),
                        ("training metrics", res.output_dir / "metrics.json"),
                        ("loss curve", res.output_dir / "loss.png"),
                        ("tensorboard", res.output_dir / "tensorboard"),
                        *[(f"eval {k}", v) for k, v in files.items()],
                        ("predictions", pred_file)]:
        console.print(f"  {label:18s} {path}")
    console.print(f"\nnext: peft-apps predict {name} --adapter {res.output_dir} INPUT  |  "
                  f"peft-apps eval {name} --adapter {res.output_dir}")


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
        console.print(f"[bold red]error:[/] {e.args[0]}", highlight=False, soft_wrap=True)
        if e.hint:
            console.print(f"[dim]hint:[/] {e.hint}", highlight=False, soft_wrap=True)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
