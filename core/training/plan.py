"""What `train` decides before training: batching, optimizer, loss kernel, the GPU memory check, the
schedule's length and what selects the kept adapter; and the tokenized columns with their report.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from peft_apps.core.config import Recipe
from peft_apps.core.data import TokenizeReport, tokenize_records
from peft_apps.core.errors import UserError


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


def _check_gpu_memory(recipe: Recipe, cols: dict[str, list], config, weight_bytes: int = 2,
                      processes: int = 1) -> None:
    """Refuse before loading when the run's estimated need exceeds the GPU's free memory (see core.memory).
    In N processes each GPU holds its share of the batch, and FSDP / ZeRO shard the weights and optimizer
    state (`distributed.shard_factors`)."""
    from peft_apps.core.distributed import shard_factors
    from peft_apps.core.memory import check_fits, estimate_training_memory

    batch = recipe.train.batch_size // max(1, processes)
    try:
        est = estimate_training_memory(config, recipe, batch * max(cols["length"]),
                                       batch * max(sum(m) for m in cols["completion_mask"]), weight_bytes)
    except Exception as e:  # noqa: BLE001 - an architecture the estimate cannot build: train unchecked
        warnings.warn(f"GPU memory check skipped: cannot size this architecture ({e})", stacklevel=2)
        return
    weights, optimizer = shard_factors(recipe, processes)
    est.weights *= weights
    est.adapter *= optimizer
    free, _ = torch.cuda.mem_get_info()
    check_fits(est, free, recipe, torch.cuda.get_device_name(0))


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
    world: Any = None  # core.distributed.World: this process's rank among how many


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
    from peft_apps.core import distributed
    from peft_apps.core.modeling import choose_runtime, load_config, model_class_for

    config = load_config(recipe.model)
    runtime = choose_runtime(recipe.model, recipe.train.mixed_precision, training=True,
                             model_class=model_class_for(config))
    w = distributed.world()
    distributed.check(recipe, w.size, torch.cuda.device_count() if runtime.device == "cuda" else 0)
    if distributed.backend(recipe, w.size) == "fsdp":
        distributed.layer_classes(config)  # an architecture FSDP cannot wrap: say so before loading
    tc = recipe.train
    steps_per_epoch = math.ceil(train_rep.kept / (tc.batch_size * tc.grad_accum))
    total_steps = tc.max_steps if tc.max_steps > 0 else math.ceil(steps_per_epoch * tc.epochs)
    select_key, greater = _selection(recipe, headline)
    return _Plan(runtime, config, choose_loss_kernel(recipe, runtime), total_steps, select_key=select_key,
                 greater_is_better=greater, world=w)
