"""Training: one recipe in, one adapter folder out. trl's SFTTrainer does the optimisation.

    out/                         the adapter, loadable by plain `PeftModel.from_pretrained(base, out)`
      adapter_model.safetensors  adapter_config.json  tokenizer files + chat template
      recipe.yaml                the resolved recipe (after overrides)
      metrics.json               train/eval loss, useful tokens/s, truncation report, timings
      loss.png                   loss curve
      tensorboard/               TensorBoard event files
      checkpoints/checkpoint-N/  every `train.save_steps` steps, safetensors + JSON only (no pickle)

What the core adds to SFTTrainer: data tokenized by the core with a counted truncation report,
batching chosen by device (length grouping on CPU / without FlashAttention, padding-free packing with
it), bf16 autocast where the hardware has it, a loss that projects only the completion positions onto
the vocabulary (same loss and gradients, less memory), AdaLoRA's budget schedule, pickle-free
checkpoints and exact resume, a rich progress bar with loss, tokens/s and ETA.

`train()` reads as its steps; each concern has its module in this package:

    plan.py        batching, optimizer, loss kernel, memory check, schedule length, selection, tokenizing
    model.py       the base model with its adapter attached
    build.py       trl's config and the core's SFTTrainer; evaluation during training (task metrics, best adapter)
    callbacks.py   progress, AdaLoRA's schedule, checkpoint stamps, Ctrl-C
    artefacts.py   metrics.json, loss.png, the adapter, recipe.yaml, the model card

The trl subclass itself lives in `core/sft_trainer.py`, imported only when training starts.
`peft_apps.core.trainer` keeps the names it always had.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from peft_apps.core.config import Recipe
from peft_apps.core.data import Record
from peft_apps.core.errors import UserError
from peft_apps.core.training.artefacts import TrainResult, _metrics, _write_artefacts, model_card
from peft_apps.core.training.build import _build_trainer, _set_evaluation
from peft_apps.core.training.callbacks import TrainingInterrupted, _add_callbacks, _CtrlC
from peft_apps.core.training.model import _load_model
from peft_apps.core.training.plan import _plan, _tokenize, choose_batching, choose_loss_kernel, choose_optim

__all__ = ["TrainResult", "TrainingInterrupted", "choose_batching", "choose_loss_kernel", "choose_optim",
           "model_card", "train"]


def train(recipe: Recipe, train_records: list[Record], eval_records: list[Record] | None = None, *,
          resume: bool = False, console=None, stop_after_steps: int | None = None,
          extra_callbacks: list | None = None, task_eval: Callable[[Any, Any], dict[str, Any]] | None = None,
          headline: tuple[str, ...] = (), force: bool = False, allow_recipe_change: bool = False) -> TrainResult:
    """Train an adapter as `recipe` says on the given records; returns where it went and its metrics.

    The steps, in order: find the output and checkpoint folders; tokenize and report truncation; choose
    the runtime; load the model and attach the adapter; build trl's config and the trainer; add the
    callbacks; train; write the artefacts. `stop_after_steps` ends training after that many optimizer
    steps as if interrupted (checkpoints stay, no final adapter is written): it is how the resume test
    simulates a crash.

    `task_eval(model, tokenizer) -> metrics` (an app's own predict + metrics, `core.loop.task_evaluator`)
    runs at every evaluation (`train.eval_steps`); `train.select_by` then keeps the best adapter by one of
    its metrics (`auto`: `headline[0]`) or by eval loss, instead of the last one.
    """
    from rich.console import Console

    from peft_apps.core.methods import check_recipe
    from peft_apps.core.bases import with_base_sha
    from peft_apps.core.modeling import load_tokenizer

    console = console or Console(stderr=True)
    check_recipe(recipe)  # a method that cannot work with the other settings: before any work
    recipe = recipe.model_copy(update={"model": with_base_sha(recipe.model)})  # a GGUF base: its SHA-256 recorded
    if not train_records:
        raise UserError("no training records: check data.train and the app's converter report")
    t_start = time.perf_counter()
    out, last = _output_folder(recipe, resume, console, force, allow_recipe_change)
    tokenizer = load_tokenizer(recipe.model)
    (train_cols, train_rep), (eval_cols, eval_rep) = _tokenize(recipe, tokenizer, train_records, eval_records,
                                                               console)
    plan = _plan(recipe, train_rep, headline)
    model, plan = _load_model(recipe, plan, train_cols)
    trainer = _build_trainer(recipe, plan, model, tokenizer, out / "checkpoints", train_cols, eval_cols)
    if plan.world.main:
        from peft_apps.core import distributed, run_folder

        if last is None:  # a new run: the folder's old run (with --force) goes only now, once the model loaded
            run_folder.start(out, recipe, force)
        if plan.world.size > 1:
            distributed.write_launch_files(out, recipe, plan.world.size, plan.runtime.device == "cuda", plan.config)
    trainer.accelerator.wait_for_everyone()  # (the other ranks: once rank 0 has made the folder theirs too)
    _set_evaluation(trainer, plan, task_eval, out / "best", resume)
    _add_callbacks(trainer, recipe, out, console, stop_after_steps, extra_callbacks)

    ctrl_c = _CtrlC(console)
    trainer.add_callback(ctrl_c)
    t_train = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=last)
    train_seconds = time.perf_counter() - t_train
    if ctrl_c.requested:
        step = trainer.state.global_step
        ckpt = out / "checkpoints" / f"checkpoint-{step}"
        raise TrainingInterrupted(step, ckpt if ckpt.is_dir() else None, out)
    if stop_after_steps is not None and trainer.state.global_step < (trainer.state.max_steps or 0):
        return TrainResult(out, {"interrupted_at_step": trainer.state.global_step})

    metrics = _metrics(recipe, plan, trainer, result, train_seconds, last, train_rep, eval_rep)
    _write_artefacts(out, recipe, trainer, tokenizer, metrics, t_start, plan)
    trainer.accelerator.wait_for_everyone()
    return TrainResult(out, metrics)


def _output_folder(recipe: Recipe, resume: bool, console, force: bool = False,
                   allow_recipe_change: bool = False) -> tuple[Path, str | None]:
    """The run's folder and, with `resume`, the checkpoint of its own run to continue from
    (`core/run_folder.py`: one run a folder; a new run in a folder holding one needs `force`)."""
    from peft_apps.core import run_folder

    out = recipe.output_dir()
    if resume:
        last, info = run_folder.resume_point(out, recipe, allow_recipe_change)
        console.print(f"resuming run {info.get('run_id')} from {last}")
        return out, last
    run_folder.check_new(out, force)  # (run.json is written when training starts: `_begin_run`)
    return out, None
