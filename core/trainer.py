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

`train()` reads as its steps (`_output_folder`, `_tokenize`, `_plan`, `_load_model`, `_build_trainer`,
`_add_callbacks`, `_metrics`, `_write_artefacts`); the trl subclass lives in `core/sft_trainer.py`,
imported only when training starts.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import TrainerCallback

from peft_apps.core.loss import _causal_lm, completion_only_loss  # noqa: F401  (their home before core/loss.py)

from peft_apps.core.config import Recipe
from peft_apps.core.data import Record, TokenizeReport, tokenize_records
from peft_apps.core.errors import UserError


# ---- device-dependent choices -----------------------------------------------------------------


def choose_batching(recipe: Recipe, runtime) -> str:
    b = recipe.train.batching
    if b != "auto":
        return b
    # Padding-free packing only pays with a varlen attention kernel; otherwise group by length.
    varlen = runtime.device == "cuda" and runtime.attn_implementation == "flash_attention_2"
    return "packing" if varlen else "group_by_length"


def choose_optim(recipe: Recipe, quantized: bool, runtime) -> str:
    if recipe.train.optim != "auto":
        return recipe.train.optim
    return "paged_adamw_8bit" if runtime.device == "cuda" and quantized else "adamw_torch"


# ---- callbacks ----------------------------------------------------------------------------------


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


def _check_gpu_memory(recipe: Recipe, cols: dict[str, list], config, weight_bytes: int = 2) -> None:
    """Refuse before loading when the run's estimated need exceeds the GPU's free memory (see core.memory)."""
    from peft_apps.core.memory import check_fits, estimate_training_memory

    batch = recipe.train.batch_size
    try:
        est = estimate_training_memory(config, recipe, batch * max(cols["length"]),
                                       batch * max(sum(m) for m in cols["completion_mask"]), weight_bytes)
    except Exception as e:  # noqa: BLE001 - an architecture the estimate cannot build: train unchecked
        warnings.warn(f"GPU memory check skipped: cannot size this architecture ({e})", stacklevel=2)
        return
    free, _ = torch.cuda.mem_get_info()
    check_fits(est, free, recipe, torch.cuda.get_device_name(0))


def _trainable_in_fp32(model) -> None:
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()


def choose_loss_kernel(recipe: Recipe, runtime) -> str:
    """`train.loss_kernel`; `auto` is torch's until the fused kernel measures faster here (eval/gpu_check.py)."""
    want = recipe.train.loss_kernel
    if want == "liger":
        import importlib.util

        if runtime.device != "cuda" or importlib.util.find_spec("liger_kernel") is None:
            raise UserError("train.loss_kernel=liger needs a CUDA GPU and liger-kernel installed",
                            hint="pip install liger-kernel, or train.loss_kernel=torch")
        return "liger"
    return "torch"


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict[str, Any]


def _plot_loss(log_history: list[dict[str, Any]], path: Path, metric: str | None = None) -> None:
    """Train and eval loss by step; with `metric` (a logged eval key), that metric on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    ev = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    task = [(h["step"], h[metric]) for h in log_history if metric and metric in h]
    if not tr and not ev:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if tr:
        ax.plot(*zip(*tr), label="train loss")
    if ev:
        ax.plot(*zip(*ev), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    if task:
        ax2 = ax.twinx()
        ax2.plot(*zip(*task), "s--", color="#c44e52", label=metric.removeprefix("eval_"))
        ax2.set_ylabel(metric.removeprefix("eval_"))
        ax2.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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

    from peft_apps.core.modeling import load_tokenizer

    console = console or Console(stderr=True)
    if not train_records:
        raise UserError("no training records: check data.train and the app's converter report")
    t_start = time.perf_counter()
    out, last = _output_folder(recipe, resume, console, force, allow_recipe_change)
    tokenizer = load_tokenizer(recipe.model)
    (train_cols, train_rep), (eval_cols, eval_rep) = _tokenize(recipe, tokenizer, train_records, eval_records,
                                                               console)
    plan = _plan(recipe, train_rep, headline)
    model, plan = _load_model(recipe, plan, train_cols)
    if last is None:  # a new run: the folder's old run (with --force) goes only now, once the model loaded
        from peft_apps.core import run_folder

        run_folder.start(out, recipe, force)
    trainer = _build_trainer(recipe, plan, model, tokenizer, out / "checkpoints", train_cols, eval_cols)
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
    return TrainResult(out, metrics)


# ---- the steps of `train` -------------------------------------------------------------------------


@dataclass
class _Plan:
    """What `train` decided before training: runtime, batching, loss kernel, schedule length."""

    runtime: Any
    config: Any  # the model's transformers config
    loss_kernel: str
    total_steps: int
    batching: str = ""
    quantized: bool = False
    select_key: str | None = None  # the logged key `train.select_by` keeps the best adapter by
    greater_is_better: bool = True


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


def _tokenize(recipe: Recipe, tokenizer, train_records, eval_records, console):
    """Columns and truncation report of each split, the reports printed; no record left is an error."""
    max_len = recipe.data.max_length
    train = tokenize_records(train_records, tokenizer, max_len, recipe.data.truncation)
    evals = (tokenize_records(eval_records, tokenizer, max_len, recipe.data.truncation)
             if eval_records else (None, TokenizeReport()))
    for split, (_, rep) in (("train", train), ("eval", evals)):
        if rep.records:
            style = "yellow" if rep.truncated or rep.dropped else "dim"
            console.print(f"[{style}]{rep.summary(split)}[/]")
    if not train[1].kept:
        raise UserError(f"every training record is longer than data.max_length={max_len}")
    return train, evals


def _selection(recipe: Recipe, headline: tuple[str, ...]) -> tuple[str | None, bool]:
    """The logged key `train.select_by` names and whether greater is better (None: keep the last adapter)."""
    by = recipe.train.select_by
    if by == "last":
        return None, True
    if not recipe.train.eval_steps:
        raise UserError(f"train.select_by={by} needs evaluations during training: set train.eval_steps=N")
    if by == "loss":
        return "eval_loss", False
    if by == "auto":
        if not headline:
            raise UserError("train.select_by=auto: this app declares no headline metric", hint="use select_by=loss")
        by = headline[0]
    return f"eval_{by}", True


def _plan(recipe: Recipe, train_rep: TokenizeReport, headline: tuple[str, ...] = ()) -> _Plan:
    """Runtime (device, precision, dtype, attention), loss kernel, schedule length and adapter selection,
    before any loading: a choice the machine cannot honour fails here."""
    from peft_apps.core.modeling import choose_runtime, load_config, model_class_for

    config = load_config(recipe.model)
    runtime = choose_runtime(recipe.model, recipe.train.mixed_precision, training=True,
                             model_class=model_class_for(config))
    tc = recipe.train
    steps_per_epoch = math.ceil(train_rep.kept / (tc.batch_size * tc.grad_accum))
    total_steps = tc.max_steps if tc.max_steps > 0 else math.ceil(steps_per_epoch * tc.epochs)
    select_key, greater = _selection(recipe, headline)
    return _Plan(runtime, config, choose_loss_kernel(recipe, runtime), total_steps, select_key=select_key,
                 greater_is_better=greater)


def _load_model(recipe: Recipe, plan: _Plan, train_cols: dict[str, list]):
    """The base model with its adapter attached, trainable parameters in fp32; the plan gains batching and
    whether the base is quantized."""
    from transformers import set_seed

    from peft_apps.core.modeling import attach_peft, is_quantized, load_base_model

    tc = recipe.train
    set_seed(tc.seed)  # adapter initialisation is random too: same seed, same starting adapter
    if plan.runtime.device == "cuda" and tc.memory_check:
        _check_gpu_memory(recipe, train_cols, plan.config, plan.runtime.dtype.itemsize)
    # With bf16 autocast the frozen base weights are kept in bf16 (no per-step fp32 -> bf16 casts, half
    # the memory); the trainable parameters stay fp32 for the optimizer (see `choose_runtime`).
    if recipe.peft.method == "prefix_tuning":
        # peft 0.21 hands its virtual key/values to transformers 5 as `past_key_values` without widening the
        # attention mask to them: the first forward pass fails deep in attention. Say so before any loading.
        raise UserError("peft.method=prefix_tuning does not train with this peft/transformers pair yet (the "
                        "attention mask is not widened to the virtual tokens)",
                        hint="use peft.method=llama_adapter (learned prompts read by every layer, zero-init gated), "
                             "prompt_tuning (virtual tokens in the input) or lora")
    model = load_base_model(recipe.model, runtime=plan.runtime, config=plan.config)
    model = attach_peft(model, recipe, plan.total_steps, tc.gradient_checkpointing)
    plan.batching = choose_batching(recipe, plan.runtime)
    if recipe.peft.method in ("prompt_tuning", "prefix_tuning") and plan.batching == "packing":
        plan.batching = "group_by_length"  # virtual tokens are per sequence: packing would share them
    plan.quantized = is_quantized(model.get_base_model() if hasattr(model, "get_base_model") else model)
    _trainable_in_fp32(model)
    if plan.runtime.precision in ("bf16", "fp16") and not plan.quantized:
        # Under autocast the adapter matmuls run in half precision anyway; peft's cast of every adapter
        # input to the fp32 adapter dtype (a full copy of the activations per adapted layer, before its
        # dropout) only costs memory traffic.
        from peft.tuners.tuners_utils import BaseTunerLayer

        for m in model.modules():
            if isinstance(m, BaseTunerLayer) and hasattr(m, "cast_input_dtype_enabled"):
                m.cast_input_dtype_enabled = False
    return model, plan


def _build_trainer(recipe: Recipe, plan: _Plan, model, tokenizer, ckpt_dir: Path, train_cols, eval_cols):
    """trl's config from the recipe and the plan, and the core's SFTTrainer over the tokenized columns."""
    from datasets import Dataset
    from trl import SFTConfig

    from peft_apps.core import sft_trainer

    tc = recipe.train
    precision = plan.runtime.precision
    args = SFTConfig(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=tc.batch_size,
        per_device_eval_batch_size=recipe.eval.batch_size,
        gradient_accumulation_steps=tc.grad_accum,
        learning_rate=tc.lr,
        lr_scheduler_type=tc.scheduler,
        warmup_steps=tc.warmup_ratio,
        num_train_epochs=tc.epochs,
        max_steps=tc.max_steps,
        weight_decay=tc.weight_decay,
        max_grad_norm=tc.max_grad_norm,
        optim=choose_optim(recipe, plan.quantized, plan.runtime),
        seed=tc.seed,
        data_seed=tc.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=plan.runtime.device != "cuda",
        activation_checkpointing=tc.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if tc.gradient_checkpointing else None,
        logging_steps=tc.logging_steps,
        save_strategy="steps",
        save_steps=tc.save_steps,
        save_total_limit=tc.save_total_limit,
        eval_strategy="steps" if tc.eval_steps else "no",
        eval_steps=tc.eval_steps,
        report_to="none",
        disable_tqdm=True,
        max_length=recipe.data.max_length,
        completion_only_loss=True,
        packing=plan.batching == "packing",
        padding_free=plan.batching == "packing",
        train_sampling_strategy="group_by_length" if plan.batching == "group_by_length" else "random",
        length_column_name="length",
        dataset_num_proc=None,
        dataloader_num_workers=0,
        remove_unused_columns=True,
    )
    eval_ds = Dataset.from_dict(eval_cols) if eval_cols and eval_cols["input_ids"] else None
    if tc.eval_steps and eval_ds is None:
        raise UserError("train.eval_steps is set but there is no eval data",
                        hint="set data.eval=FILE or data.eval_fraction above 0")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*padding_free.*")
        trainer = sft_trainer.CoreSFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict(train_cols),
                                             eval_dataset=eval_ds, processing_class=tokenizer)
    trainer.loss_kernel = plan.loss_kernel
    # trl casts a quantized model's trainable parameters to bf16 (QLoRA paper); that breaks fp32 training on
    # devices without native bf16 and loses optimizer precision elsewhere: autocast does the half-precision math.
    _trainable_in_fp32(trainer.model)
    return trainer


def _set_evaluation(trainer, plan: _Plan, task_eval, best_dir: Path, resume: bool) -> None:
    """The app's task metrics at each evaluation, and where the best adapter goes when the run selects one
    (a fresh run starts the selection anew; a resumed one keeps its best so far)."""
    import shutil

    trainer.task_eval = task_eval
    trainer.select_key, trainer.greater_is_better = plan.select_key, plan.greater_is_better
    if plan.select_key is not None:
        if not resume and best_dir.exists():
            shutil.rmtree(best_dir)
        best_dir.mkdir(parents=True, exist_ok=True)
        trainer.best_dir = best_dir


def _add_callbacks(trainer, recipe: Recipe, out: Path, console, stop_after_steps, extra_callbacks) -> None:
    """TensorBoard, the rich progress bar, AdaLoRA's budget schedule, the test's stop, the caller's own."""
    from transformers.integrations import TensorBoardCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if "tensorboard" in recipe.train.report_to:
        from torch.utils.tensorboard import SummaryWriter

        tb = TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(out / "tensorboard")))
        tb.logging_dir = str(out / "tensorboard")  # where it reopens after train end (final eval)
        trainer.add_callback(tb)
    trainer.add_callback(RichProgressCallback(trainer, console))
    trainer.add_callback(_StampCheckpoints(out))
    if recipe.peft.method == "adalora":
        trainer.add_callback(AdaLoraCallback(trainer.model))
    if stop_after_steps is not None:
        trainer.add_callback(_StopAfter(stop_after_steps))
    for cb in extra_callbacks or []:
        trainer.add_callback(cb)


class _StampCheckpoints(TrainerCallback):
    """Every checkpoint carries the run's id and recipe (run.json), so `--resume` knows whose it is."""

    def __init__(self, out: Path):
        self.out = out

    def on_save(self, args, state, control, **kwargs):
        from peft_apps.core import run_folder

        run_folder.stamp_checkpoint(self.out, Path(args.output_dir) / f"checkpoint-{state.global_step}")


def _metrics(recipe: Recipe, plan: _Plan, trainer, result, train_seconds: float, last, train_rep, eval_rep):
    rt = plan.runtime
    metrics: dict[str, Any] = {
        "app": recipe.app, "recipe": recipe.name, "method": recipe.peft.method,
        "base": recipe.model.base, "quantized": plan.quantized, "precision": rt.precision,
        "batching": plan.batching, "attn_implementation": rt.attn_implementation,
        "dtype": str(rt.dtype).removeprefix("torch."), "device": rt.device, "loss_kernel": plan.loss_kernel,
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss, "train_seconds": round(train_seconds, 2),
        "useful_tokens_per_second": round(trainer.useful_tokens / max(train_seconds, 1e-9), 1),
        "resumed_from": last,
        "data": {"train": train_rep.as_dict(), "eval": eval_rep.as_dict()},
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
    }
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if losses:
        metrics["first_logged_loss"], metrics["last_logged_loss"] = losses[0], losses[-1]
    if trainer.eval_dataset is not None:
        # the evaluation of the last step, unless `train.eval_steps` already ran it there
        step = trainer.state.global_step
        done = [h for h in trainer.state.log_history if "eval_loss" in h and h.get("step") == step]
        final = done[-1] if done else trainer.evaluate()
        metrics["eval_loss"] = final.get("eval_loss")
        if trainer.task_eval is not None:
            metrics["eval_metrics"] = {k.removeprefix("eval_"): v for k, v in final.items() if k.startswith("eval_")
                                       and k != "eval_loss" and not k.endswith(("_runtime", "per_second"))}
    history = [h for h in trainer.state.log_history if any(k.startswith("eval_") for k in h)]
    if history:
        metrics["eval_history"] = history
    return metrics


def _write_artefacts(out: Path, recipe: Recipe, trainer, tokenizer, metrics: dict, t_start: float,
                     plan: _Plan) -> None:
    """The adapter (safetensors: the last one, or the best by `train.select_by`), tokenizer, resolved
    recipe, metrics.json and loss.png."""
    import shutil

    from peft_apps.core.io import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    best = trainer.best_dir / "best.json" if trainer.best_dir is not None else None
    if best is not None and best.is_file():
        for f in trainer.best_dir.iterdir():
            if f.name.startswith(("adapter_", "model", "config.json", "generation_config")) or f.name == "README.md":
                shutil.copy2(f, out / f.name)
        metrics["selected"] = json.loads(best.read_text())
    else:
        trainer.model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    # the base model as plain peft, vLLM and TGI resolve it: the hub id as the recipe names it, or the model's
    # local folder (a builtin model's is its built copy; the builtin name stays in recipe.yaml)
    config_file = out / "adapter_config.json"
    if config_file.is_file():  # a full fine-tune's folder holds the model itself (config.json), no adapter
        from peft_apps.core.modeling import resolve_base

        base = recipe.model.base
        if base.startswith("builtin:") or Path(base).expanduser().exists():
            base = str(Path(resolve_base(base)).resolve())
        adapter_config = json.loads(config_file.read_text())
        adapter_config["base_model_name_or_path"] = base
        atomic_write(config_file, json.dumps(adapter_config, indent=2))
    atomic_write(out / "recipe.yaml", recipe.to_yaml())
    metrics["total_seconds"] = round(time.perf_counter() - t_start, 2)
    atomic_write(out / "metrics.json", json.dumps(metrics, indent=2))
    atomic_write(out / "README.md", model_card(recipe, metrics))
    metric = plan.select_key if plan.select_key not in (None, "eval_loss") else None
    _plot_loss(trainer.state.log_history, out / "loss.png", metric)


def model_card(recipe: Recipe, metrics: dict[str, Any]) -> str:
    """The run's README.md: what the adapter is, what it was trained on, how it scored, how to load it."""
    import yaml

    data = metrics.get("data", {})
    rows = [("app", recipe.app), ("recipe", recipe.name), ("method", f"{recipe.peft.method} (r={recipe.peft.r}, "
            f"alpha={recipe.peft.alpha})"), ("base model", recipe.model.base),
            ("quantization", recipe.model.quantization), ("training data", recipe.data.train or "-"),
            ("eval data", recipe.data.eval or (f"{recipe.data.eval_fraction:.0%} of the training file held out"
                                               if recipe.data.eval_fraction else "-")),
            ("records", f"{data.get('train', {}).get('kept', '?')} train, {data.get('eval', {}).get('kept', 0)} eval"),
            ("steps", metrics.get("steps")), ("train loss", f"{metrics.get('train_loss', float('nan')):.4f}")]
    if metrics.get("eval_loss") is not None:
        rows.append(("eval loss", f"{metrics['eval_loss']:.4f}"))
    for k, v in (metrics.get("eval_metrics") or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "n":
            rows.append((f"eval {k}", f"{v:.4f}" if isinstance(v, float) else v))
    if metrics.get("selected"):
        sel = metrics["selected"]
        rows.append(("kept", f"the adapter of step {sel['step']} ({sel['metric']} = {sel['value']:.4f})"))
    rows.append(("device", f"{metrics.get('device')} ({metrics.get('precision')})"))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    front = yaml.safe_dump({"base_model": recipe.model.base, "library_name": "peft",
                            "tags": ["peft-apps", recipe.app, recipe.peft.method]}, sort_keys=False)
    load_code = ('from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained("THIS_FOLDER")'
                 if recipe.peft.method == "full" else
                 'from peft import PeftModel\nfrom transformers import AutoModelForCausalLM\nmodel = PeftModel.from_pretrained('
                 f'AutoModelForCausalLM.from_pretrained("{recipe.model.base}"), "THIS_FOLDER")')
    return f"""---
{front}---

# {recipe.app} adapter: {recipe.name}

{recipe.description or f"A {recipe.peft.method} adapter for the {recipe.app} app of peft-apps."}

| | |
|---|---|
{table}

## Use

```bash
peft-apps predict {recipe.app} --adapter THIS_FOLDER INPUT...
peft-apps eval {recipe.app} --adapter THIS_FOLDER
```

```python
{load_code}
```

`recipe.yaml` is the full resolved recipe; `metrics.json` has every figure above and the eval history.
"""


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
