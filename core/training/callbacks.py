"""The callbacks a run adds to trl's trainer: progress, AdaLoRA's schedule, checkpoint stamps, Ctrl-C, the
test's stop; and `TrainingInterrupted`, what a Ctrl-C'd run raises.
"""

from __future__ import annotations

import time
from pathlib import Path

from transformers import TrainerCallback

from peft_apps.core.config import Recipe


class AdaLoraCallback(TrainerCallback):
    """AdaLoRA's rank reallocation needs the gradients: after optimizer.step, before zero_grad."""

    def __init__(self, model):
        self.model = model

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.model.base_model.update_and_allocate(state.global_step)


class RichProgressCallback(TrainerCallback):
    """A rich progress bar: step, loss, useful tokens/s, ETA."""

    def __init__(self, trainer_ref, console=None):
        """`trainer_ref`: the core trainer, whose `useful_tokens` count gives tokens/s."""
        self.trainer_ref = trainer_ref
        self.console = console
        self.progress = None
        self.task = None
        self.loss = float("nan")
        self.t0 = 0.0
        self.tokens0 = 0

    def on_train_begin(self, args, state, control, **kwargs):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
            TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step,
                                           loss="-", tps="-")
        self.t0 = time.perf_counter()
        self.tokens0 = self.trainer_ref.useful_tokens

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = logs["loss"]
        shown = {k.removeprefix("eval_"): v for k, v in (logs or {}).items() if k.startswith("eval_")
                 and not k.endswith(("_runtime", "_per_second")) and isinstance(v, (int, float))}
        if shown and self.progress is not None:
            self.progress.console.print(f"step {state.global_step} eval: " + ", ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()), highlight=False)

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is None:
            return
        dt = max(time.perf_counter() - self.t0, 1e-9)
        tps = (self.trainer_ref.useful_tokens - self.tokens0) / dt
        self.progress.update(self.task, completed=state.global_step,
                             loss=f"{self.loss:.4f}" if self.loss == self.loss else "-", tps=f"{tps:,.0f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class _StampCheckpoints(TrainerCallback):
    """Every checkpoint carries the run's id and recipe (run.json), so `--resume` knows whose it is."""

    def __init__(self, out: Path):
        self.out = out

    def on_save(self, args, state, control, **kwargs):
        from peft_apps.core import run_folder

        if not state.is_world_process_zero:
            return

        run_folder.stamp_checkpoint(self.out, Path(args.output_dir) / f"checkpoint-{state.global_step}")


class TrainingInterrupted(Exception):
    """Ctrl-C during `train`: training stopped after the current step and saved a checkpoint there."""

    def __init__(self, step: int, checkpoint: Path | None, output_dir: Path):
        super().__init__(f"interrupted at step {step}")
        self.step, self.checkpoint, self.output_dir = step, checkpoint, output_dir


class _CtrlC(TrainerCallback):
    """The first Ctrl-C asks training to stop after the current step and save a checkpoint there; a
    second one stops at once (Python's own KeyboardInterrupt)."""

    def __init__(self, console=None):
        self.console = console
        self.requested = False
        self.previous = None

    def _handler(self, signum, frame):
        import signal

        if self.requested:
            signal.signal(signal.SIGINT, self.previous or signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True
        if self.console is not None:
            self.console.print("[yellow]Ctrl-C: stopping after this step and saving a checkpoint "
                               "(Ctrl-C again to quit at once)[/]")

    def on_train_begin(self, args, state, control, **kwargs):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handler)

    def on_step_end(self, args, state, control, **kwargs):
        if args.world_size > 1:
            # the ranks stop after the same step, or the next step's collectives would wait forever
            import torch
            import torch.distributed as dist

            flag = torch.tensor([int(self.requested)], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            self.requested = bool(flag.item())
        if self.requested:
            control.should_training_stop = True
            control.should_save = True

    def on_train_end(self, args, state, control, **kwargs):
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None


class _StopAfter(TrainerCallback):
    def __init__(self, steps: int):
        self.steps = steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.steps:
            control.should_training_stop = True
            control.should_save = True


def _add_callbacks(trainer, recipe: Recipe, out: Path, console, stop_after_steps, extra_callbacks) -> None:
    """TensorBoard, the rich progress bar, AdaLoRA's budget schedule, the test's stop, the caller's own."""
    from transformers.integrations import TensorBoardCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    main = trainer.args.process_index == 0  # rank 0 alone logs and shows progress
    if "tensorboard" in recipe.train.report_to and main:
        from torch.utils.tensorboard import SummaryWriter

        tb = TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(out / "tensorboard")))
        tb.logging_dir = str(out / "tensorboard")  # where it reopens after train end (final eval)
        trainer.add_callback(tb)
    if main:
        trainer.add_callback(RichProgressCallback(trainer, console))
    trainer.add_callback(_StampCheckpoints(out))
    if recipe.peft.method == "adalora":
        trainer.add_callback(AdaLoraCallback(trainer.model))
    if stop_after_steps is not None:
        trainer.add_callback(_StopAfter(stop_after_steps))
    for cb in extra_callbacks or []:
        trainer.add_callback(cb)
