"""`peft-apps eval`, `predict` and `score`: an adapter's metrics, its outputs, and scoring model text from files."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from peft_apps.core.errors import UserError
from peft_apps.core.endpoint import API_KEY_ENV_HELP, ENDPOINT_HELP, MODEL_HELP, endpoint_options

from .common import ADAPTER_HELP, APP_HELP, OVERRIDES_HELP, _prepare, _recipe, console, out_console


def eval_cmd(
    app_name: str = typer.Argument(..., metavar="APP", help=APP_HELP),
    overrides: Optional[list[str]] = typer.Argument(None, metavar="KEY=VALUE", help=OVERRIDES_HELP),
    adapter: str = typer.Option(..., "--adapter", "-a", help=ADAPTER_HELP),
    split: str = typer.Option("eval", "--split", "-s", help="eval or train"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help=ENDPOINT_HELP),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", metavar="VAR", help=API_KEY_ENV_HELP),

    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="default: the adapter's recipe.yaml"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="report folder (default: the adapter folder)"),
    force: bool = typer.Option(False, "--force", help="replace the evaluation files the report folder holds"),
    samples: Optional[int] = typer.Option(None, "--samples", min=1, help="self-consistency: k sampled answers "
                                          "per example, majority vote (apps that vote)"),
    subtask: Optional[str] = typer.Option(None, "--task", "--target", "-t",
                                          help="the app's sub-task or target variant (see `peft-apps apps`)"),
) -> None:
    """Evaluate an adapter: metrics as JSON, a markdown report, charts and the predictions (JSONL)."""
    a, r = _recipe(app_name, recipe, [*(overrides or []), *([f"eval.samples={samples}"] if samples else [])],
                   adapter, subtask=subtask)
    if split not in ("eval", "train"):
        raise UserError(f"--split must be eval or train, got {split!r}")
    _prepare()
    from peft_apps.core import loop
    from peft_apps.core.report import write_eval_report

    out_dir = out or Path(adapter)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; give a folder path")
    if (out_dir / "eval_metrics.json").exists() and not force:
        raise UserError(f"{out_dir} already holds an evaluation (eval_metrics.json)",
                        hint="pass --force to replace it, or -o OTHER_FOLDER")
    t0 = time.perf_counter()
    ep = endpoint_options(endpoint, model, api_key_env)
    metrics = loop.evaluate(a, adapter, r, split, out_dir, model=None if ep else model, endpoint=ep)
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    files = write_eval_report(out_dir, f"{a.name} evaluation ({split})", metrics, a.headline_for(r))
    _print_scalars(metrics, a.headline_for(r))
    console.print("reports: " + ", ".join(str(p) for p in files.values()) + f", {out_dir / loop.PREDICTIONS}")


def _print_scalars(metrics: dict, headline: tuple[str, ...] = (), only_headline: bool = False) -> None:
    from rich.table import Table

    from peft_apps.core.loop import scalar_metrics
    from peft_apps.core.report import format_value

    t = Table(show_header=True)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in scalar_metrics(metrics, headline):
        if only_headline and k not in headline and k != "n":
            continue
        t.add_row(k, format_value(v))
    out_console.print(t)


def _print_learning(a, headline: tuple[str, ...], after: dict, before: dict, majority: dict | None,
                    real: bool = False) -> None:
    """The headline metrics on held-out examples: always the majority answer, the base model, the adapter;
    and a plain note when training gained nothing over them."""
    from rich.table import Table

    t = Table(title=f"held-out examples: {after.get('n')}", title_justify="left")
    t.add_column("metric")
    if majority is not None:
        t.add_column("majority answer", justify="right")
    t.add_column("before training", justify="right")
    t.add_column("after training", justify="right", style="bold")
    from peft_apps.core.report import format_value as fmt

    for k in headline:
        if k in after:
            t.add_row(k, *([fmt(majority.get(k, "-"))] if majority is not None else []), fmt(before.get(k, "-")),
                      fmt(after[k]))
    out_console.print(t)
    key = next((k for k in headline if isinstance(after.get(k), (int, float))), None)
    if key and isinstance(after.get(key), (int, float)):
        best_baseline = max(x.get(key, 0) for x in (before, majority or {}))
        if after[key] <= best_baseline and real:
            console.print(f"[yellow]{key}: no gain over the baselines[/] (adapter {fmt(after[key])}, best baseline "
                          f"{fmt(best_baseline)}): a 135M model trained for minutes on a few hundred records; a larger "
                          f"base, more data or more steps (train.epochs=...) move it. The README's quality table says "
                          f"where each app stands.")
        elif after[key] <= best_baseline:
            console.print(f"[yellow]no gain over the baselines at this size:[/] a tiny random model cannot learn "
                          f"{a.name}'s task in a minute; this run shows the pipeline end to end. A pretrained base "
                          f"model (model.base=...) on a GPU is what learns it.")


def predict_cmd(
    app_name: str = typer.Argument(..., metavar="APP", help=APP_HELP),
    inputs: list[str] = typer.Argument(..., metavar="INPUT", help="input files in the app's data format, or "
                                       "texts (README: each app's Data)"),
    adapter: str = typer.Option(..., "--adapter", "-a", help=ADAPTER_HELP),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help=ENDPOINT_HELP),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", metavar="VAR", help=API_KEY_ENV_HELP),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write JSONL here instead of stdout"),
    force: bool = typer.Option(False, "--force", help="overwrite --out and --metrics if they exist"),
    samples: Optional[int] = typer.Option(None, "--samples", min=1, help="self-consistency: k sampled answers "
                                          "per input, majority vote (apps that vote)"),
    metrics: Optional[Path] = typer.Option(None, "--metrics", help="write the run's counts here (JSON: rows, "
                                           "parser drops, generation counts, prefix cache hits/misses/evictions/"
                                           "tokens saved, seconds); default with --out: OUT's name + .metrics.json"),
) -> None:
    """Run an adapter on inputs; prints JSONL ({"id", "output", "parsed"}), which `score` reads."""
    from peft_apps.core.io import atomic_write, check_output

    a, r = _recipe(app_name, None, [f"eval.samples={samples}"] if samples else None, adapter)
    if out:
        check_output(out, force, "--out")  # before the model loads
    if metrics is None and out is not None:
        metrics = out.with_name(out.name.removesuffix(".jsonl") + ".metrics.json")
    if metrics:
        check_output(metrics, force, "--metrics")
    _prepare()
    from peft_apps.core import loop

    from peft_apps.core.errors import issued_warnings

    ep = endpoint_options(endpoint, model, api_key_env)
    report: dict = {}
    t0 = time.perf_counter()
    lines = [loop.dumps_row(x) for x in loop.predict(a, adapter, inputs, r, model=None if ep else model, endpoint=ep,
                                                     report=report)]
    report["seconds"] = round(time.perf_counter() - t0, 2)
    if out:
        atomic_write(out, "".join(line + "\n" for line in lines))
        console.print(f"{len(lines)} prediction{'' if len(lines) == 1 else 's'} -> {out}")
    if metrics:
        atomic_write(metrics, json.dumps(report, indent=2) + "\n")
        console.print(f"run counts -> {metrics}")
    else:
        for line in lines:
            out_console.print(line, markup=False, highlight=False, soft_wrap=True)
    n = len(issued_warnings())
    if n:
        console.print(f"[yellow]{n} warning{'' if n == 1 else 's'}[/] (above); --strict makes them errors")


def score_cmd(
    app_name: str = typer.Argument(..., metavar="APP", help=APP_HELP),
    overrides: Optional[list[str]] = typer.Argument(None, metavar="KEY=VALUE",
                                                    help="recipe overrides, e.g. the app's task settings"),
    gold: Path = typer.Option(..., "--gold", help="gold file in the app's data format (README: each app's Data)"),
    pred: Path = typer.Option(..., "--pred", help='JSONL of {"id", "output"} (raw model text; what `predict` '
                                                   'and `eval` write; README: Evaluating, predicting and scoring)'),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the metrics JSON here"),
    force: bool = typer.Option(False, "--force", help="overwrite --out if it exists"),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="recipe whose settings parse and score "
                                                                       "(default: the app's default recipe)"),
    only_predicted: bool = typer.Option(False, "--only-predicted", help="score only the gold examples that have "
                                        "a prediction (default: a missing one counts as an empty output)"),
    subtask: Optional[str] = typer.Option(None, "--task", "--target", "-t",
                                          help="the app's sub-task or target variant (see `peft-apps apps`)"),
    by: str = typer.Option("auto", "--by", help="how predictions join gold records: auto (by id when the "
                           "predictions carry ids, else by position), id, or position"),
) -> None:
    """Score predictions against gold data without loading a model (model text is parsed as `eval` does).

    Matching: by id when the predictions carry ids (every one must then): a prediction goes to the gold
    record with its id, and a gold id that repeats takes its predictions in file order. When no prediction
    has an id, the n-th prediction goes to the n-th gold record (--by position forces this). Never a
    per-row fallback from id to position. Predictions for records the reader skipped (e.g. exam questions
    that need a picture) are left out and counted in one warning, as are ids the gold file lacks."""
    from peft_apps.core.io import atomic_write, check_output

    a, r = _recipe(app_name, recipe, overrides, subtask=subtask)
    if out:
        check_output(out, force, "--out")
    metrics = a.score(gold, pred, r, only_predicted=only_predicted, by=by)
    if out:
        atomic_write(out, json.dumps(metrics, indent=2, ensure_ascii=False))
        console.print(f"metrics -> {out}")
    _print_scalars(metrics, a.headline_for(r))
