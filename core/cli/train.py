"""`peft-apps train`: one process, or N through accelerate (`--num-processes`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from peft_apps.core.errors import UserError

from .common import APP_HELP, OVERRIDES_HELP, _prepare, _recipe, console


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
