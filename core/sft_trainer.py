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

from transformers.trainer_pt_utils import BatchRebalanceSampler
from trl import SFTTrainer

from peft_apps.core import checkpoint as ckpt
from peft_apps.core.distributed import MaskedCopies, RankBatches
from peft_apps.core.errors import UserError
from peft_apps.core.loss import _causal_lm, completion_only_loss


def save_converted(model, path, initial: str, **kw) -> None:
    """A PiSSA / OLoRA / CorDA adapter saved as the plain LoRA it amounts to on the original base (peft's
    `path_initial_model_for_weight_conversion`), with the modules_to_save tensors that peft's conversion
    leaves out put back from an ordinary save."""
    import tempfile

    from safetensors.torch import load_file, save_file

    model.save_pretrained(str(path), safe_serialization=True, path_initial_model_for_weight_conversion=initial, **kw)
    with tempfile.TemporaryDirectory() as plain:
        model.save_pretrained(plain, safe_serialization=True, **kw)
        full = load_file(str(Path(plain) / "adapter_model.safetensors"))
    file = Path(path) / "adapter_model.safetensors"
    converted = load_file(str(file))
    missing = {k: v for k, v in full.items() if k not in converted and "lora_" not in k}
    if missing:
        save_file({**converted, **missing}, str(file), metadata={"format": "pt"})


class RankBatchSampler(RankBatches, BatchRebalanceSampler):
    """transformers hands a `BatchRebalanceSampler` to the DataLoader as its batch sampler, unsharded."""


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
        if not hasattr(self, "_best"):  # read once: every rank decides from the same record
            self._best = json.loads(record.read_text()) if record.is_file() else None
        best = self._best
        if best is not None and not (value > best["value"] if self.greater_is_better else value < best["value"]):
            return
        self.save_adapter(self.best_dir)
        self._best = {"step": self.state.global_step, "metric": self.select_key.removeprefix("eval_"), "value": value}
        if self.args.should_save:
            record.write_text(json.dumps(self._best))

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
            loss = completion_only_loss(lm, inputs, num_items_in_batch, kernel=self.loss_kernel)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # divided by the completion tokens of every rank, and DDP / FSDP average the gradients over the
            # ranks: scaled back by N, each token counts as in one process (the trainer's own loss does this)
            loss = loss * self.accelerator.num_processes
        return loss

    def _rank_batches(self) -> bool:
        """Batches drawn by `distributed.RankBatches` (all but packing, whose rows the packer made)."""
        return not self.args.padding_free and "length" in self.train_dataset.column_names

    def get_train_dataloader(self):
        if not self._rank_batches():
            return super().get_train_dataloader()
        return self._get_dataloader(dataset=MaskedCopies(self.train_dataset), description="Training",
                                    batch_size=self._train_batch_size, sampler_fn=self._get_train_sampler,
                                    is_training=True)

    def _get_train_sampler(self, train_dataset=None):
        # `self.train_dataset` keeps "length" in the dataset's row order
        if not self._rank_batches():
            return super()._get_train_sampler(train_dataset)
        a = self.args
        return RankBatchSampler(self.train_dataset["length"], a.per_device_train_batch_size * a.world_size,
                                a.world_size, a.process_index, seed=a.data_seed if a.data_seed is not None else a.seed,
                                order="sorted" if a.train_sampling_strategy == "group_by_length" else "random")

    def save_adapter(self, path) -> None:
        """The adapter as safetensors in `path`, from every rank (FSDP and ZeRO-3 gather the shards), written
        by rank 0."""
        model = self.accelerator.unwrap_model(self.model)
        # FSDP / ZeRO: every rank takes part in gathering the state dict
        kw = {"state_dict": self.accelerator.get_state_dict(self.model)} \
            if self.is_fsdp_enabled or self.is_deepspeed_enabled else {}
        if not self.args.should_save:
            return
        # PiSSA / OLoRA / CorDA: the base holds the residual; saved as a plain LoRA on the original base
        initial = getattr(model, "peft_apps_initial", None)
        if initial:
            save_converted(model, path, initial, **kw)
        else:
            model.save_pretrained(str(path), safe_serialization=True, **kw)

    loraplus_lr_ratio: float | None = None  # peft.method=lora_plus: B's learning rate over A's
    loraplus_lr_embedding: float | None = None

    def create_optimizer(self, model=None):
        """LoRA+ (peft.method=lora_plus): peft's `create_loraplus_optimizer`, B matrices at a higher rate."""
        if self.loraplus_lr_ratio is None or self.optimizer is not None:
            return super().create_optimizer(model) if model is not None else super().create_optimizer()
        from peft.optimizers import create_loraplus_optimizer

        cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
        kwargs = {k: v for k, v in kwargs.items() if k != "lr"}
        extra = {"loraplus_lr_embedding": self.loraplus_lr_embedding} if self.loraplus_lr_embedding else {}
        self.optimizer = create_loraplus_optimizer(self.model, cls, lr=self.args.learning_rate,
                                                   loraplus_lr_ratio=self.loraplus_lr_ratio,
                                                   weight_decay=self.args.weight_decay, **kwargs, **extra)
        return self.optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):
        am = inputs.get("attention_mask")
        if am is not None:
            self.useful_tokens += int(am.sum())
        elif "position_ids" in inputs or "input_ids" in inputs:
            self.useful_tokens += int(inputs["input_ids"].numel())
        return super().training_step(model, inputs, num_items_in_batch)

    # checkpoint state as safetensors + JSON
    def _save_optimizer_and_scheduler(self, output_dir):
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            # sharded optimizer state: gathered and written by the backend's own checkpointing
            return super()._save_optimizer_and_scheduler(output_dir)
        if not self.args.should_save:  # DDP: every rank holds the same state; rank 0 writes it
            return
        os.makedirs(output_dir, exist_ok=True)
        ckpt.save_optimizer(self.optimizer.state_dict(), output_dir)
        ckpt.save_json_state(self.lr_scheduler.state_dict(), Path(output_dir) / ckpt.SCHEDULER)

    def _load_optimizer_and_scheduler(self, checkpoint):
        if checkpoint is None:
            return
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_optimizer_and_scheduler(checkpoint)
        if not (Path(checkpoint) / ckpt.OPTIMIZER).is_file():
            raise UserError(f"checkpoint {checkpoint} has no {ckpt.OPTIMIZER}: it was not written by peft-apps")
        self.optimizer.load_state_dict(ckpt.load_optimizer(checkpoint))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.lr_scheduler.load_state_dict(ckpt.load_json_state(Path(checkpoint) / ckpt.SCHEDULER))

    def _save_scaler(self, output_dir):
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and self.args.should_save:
            ckpt.save_json_state(scaler.state_dict(), Path(output_dir) / ckpt.SCALER)

    def _load_scaler(self, checkpoint):
        scaler = getattr(self.accelerator, "scaler", None)
        path = Path(checkpoint or "") / ckpt.SCALER
        if scaler is not None and checkpoint and path.is_file():
            scaler.load_state_dict(ckpt.load_json_state(path))

    def _save_rng_state(self, output_dir):
        os.makedirs(output_dir, exist_ok=True)
        ckpt.save_rng(output_dir, self.args.process_index)

    def _load_rng_state(self, checkpoint):
        if checkpoint is not None:
            ckpt.load_rng(checkpoint, self.args.process_index)

    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict)
        if not self.args.should_save:
            return
        out = Path(output_dir or self.args.output_dir)
        (out / "training_args.bin").unlink(missing_ok=True)
        (out / "training_args.json").write_text(self.args.to_json_string())
