"""The trl SFTTrainer the core trains with: pickle-free checkpoints, completion-only logits in the loss,
length-sorted batches, a count of useful (non-padding) tokens.

Its own module because it subclasses trl at import time: `core.trainer` imports it only inside `train()`,
so importing the core (and `peft-apps --help`) does not import trl.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable

from trl import SFTTrainer

from peft_apps.core import checkpoint as ckpt
from peft_apps.core.errors import UserError
from peft_apps.core.loss import _causal_lm, completion_only_loss


class CoreSFTTrainer(SFTTrainer):
    """SFTTrainer with pickle-free checkpoints and a count of useful (non-padding) tokens."""

    useful_tokens: int = 0
    completion_logits_only: bool = True
    loss_kernel: str = "torch"  # "liger": fused linear + cross-entropy (CUDA, liger-kernel installed)
    # The app's own predictions + metrics on a fixed eval slice: (model, tokenizer) -> {metric: value}.
    task_eval: Callable[[Any, Any], dict[str, Any]] | None = None
    # Keep the adapter that scores best on this logged key (e.g. "eval_f1", "eval_loss") in `best_dir`.
    select_key: str | None = None
    greater_is_better: bool = True
    best_dir: Path | None = None

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        """The app's task metrics, then eval loss, logged as one entry (TensorBoard, metrics.json,
        loss.png); then, when the run selects by a metric, the adapter saved to `best_dir` if it is the
        best so far."""
        task = {}
        if self.task_eval is not None:
            with self.accelerator.autocast():
                task = {f"{metric_key_prefix}_{k}": v for k, v in self.task_eval(self.model, self.processing_class).items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._task_metrics = task  # `log` adds them to the evaluation's entry
        metrics = {**super().evaluate(eval_dataset, ignore_keys, metric_key_prefix), **task}
        if self.select_key is not None and self.best_dir is not None:
            self._keep_if_best(metrics)
        return metrics

    def log(self, logs, *args, **kwargs):
        extra = getattr(self, "_task_metrics", None)
        if extra and any(k.endswith("_loss") and k != "loss" for k in logs):  # the evaluation's own entry
            logs = {**logs, **extra}
            self._task_metrics = {}
        return super().log(logs, *args, **kwargs)

    def _keep_if_best(self, metrics: dict[str, Any]) -> None:
        if self.select_key not in metrics:
            names = ", ".join(k.removeprefix("eval_") for k in metrics if k.startswith("eval_"))
            raise UserError(f"train.select_by: the evaluation has no metric "
                            f"{self.select_key.removeprefix('eval_')!r}", hint=f"it has: {names}")
        value = float(metrics[self.select_key])
        record = self.best_dir / "best.json"
        best = json.loads(record.read_text()) if record.is_file() else None
        if best is not None and not (value > best["value"] if self.greater_is_better else value < best["value"]):
            return
        self.model.save_pretrained(str(self.best_dir), safe_serialization=True)
        record.write_text(json.dumps({"step": self.state.global_step, "metric": self.select_key.removeprefix("eval_"),
                                      "value": value}))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Loss from the completion positions' logits only.

        The prompt's tokens carry no loss, yet a plain forward projects every position onto the
        vocabulary and takes a log-softmax there. Running the decoder, then `lm_head` and the
        cross-entropy on the label positions alone gives the same loss and gradients for less work
        (prompts are most of the tokens in these tasks). Falls back to the standard path for
        prompt-learning methods and models whose head does more than a linear projection.
        """
        lm = _causal_lm(model)
        labels = inputs.get("labels")
        if return_outputs or not self.completion_logits_only or lm is None or labels is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # accelerate wraps only model.forward in autocast; these direct calls need their own
        with self.accelerator.autocast():
            return completion_only_loss(lm, inputs, num_items_in_batch, kernel=self.loss_kernel)

    def _get_train_sampler(self, train_dataset=None):
        # `train_dataset` arrives with unused columns removed; `self.train_dataset` keeps "length"
        # in the same row order.
        full = self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or "length" not in full.column_names:
            return super()._get_train_sampler(train_dataset)
        from peft_apps.core.sampling import SortedBatchSampler

        return SortedBatchSampler(full["length"], self.args.per_device_train_batch_size,
                                  seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed)

    def training_step(self, model, inputs, num_items_in_batch=None):
        am = inputs.get("attention_mask")
        if am is not None:
            self.useful_tokens += int(am.sum())
        elif "position_ids" in inputs or "input_ids" in inputs:
            self.useful_tokens += int(inputs["input_ids"].numel())
        return super().training_step(model, inputs, num_items_in_batch)

    # checkpoint state as safetensors + JSON
    def _save_optimizer_and_scheduler(self, output_dir):
        os.makedirs(output_dir, exist_ok=True)
        ckpt.save_optimizer(self.optimizer.state_dict(), output_dir)
        ckpt.save_json_state(self.lr_scheduler.state_dict(), Path(output_dir) / ckpt.SCHEDULER)

    def _load_optimizer_and_scheduler(self, checkpoint):
        if checkpoint is None:
            return
        if not (Path(checkpoint) / ckpt.OPTIMIZER).is_file():
            raise UserError(f"checkpoint {checkpoint} has no {ckpt.OPTIMIZER}: it was not written by peft-apps")
        self.optimizer.load_state_dict(ckpt.load_optimizer(checkpoint))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.lr_scheduler.load_state_dict(ckpt.load_json_state(Path(checkpoint) / ckpt.SCHEDULER))

    def _save_scaler(self, output_dir):
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None:
            ckpt.save_json_state(scaler.state_dict(), Path(output_dir) / ckpt.SCALER)

    def _load_scaler(self, checkpoint):
        scaler = getattr(self.accelerator, "scaler", None)
        path = Path(checkpoint or "") / ckpt.SCALER
        if scaler is not None and checkpoint and path.is_file():
            scaler.load_state_dict(ckpt.load_json_state(path))

    def _save_rng_state(self, output_dir):
        os.makedirs(output_dir, exist_ok=True)
        ckpt.save_rng(output_dir)

    def _load_rng_state(self, checkpoint):
        if checkpoint is not None:
            ckpt.load_rng(checkpoint)

    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict)
        out = Path(output_dir or self.args.output_dir)
        (out / "training_args.bin").unlink(missing_ok=True)
        (out / "training_args.json").write_text(self.args.to_json_string())
