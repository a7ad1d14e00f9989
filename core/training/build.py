"""trl's config from the recipe and the plan, the core's SFTTrainer over the tokenized columns, and the
evaluation during training (`train.eval_steps`: the app's task metrics; `train.select_by`: the best adapter).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from peft_apps.core.config import Recipe
from peft_apps.core.errors import UserError
from peft_apps.core.training.model import _trainable_in_fp32
from peft_apps.core.training.plan import _Plan, choose_optim


def _build_trainer(recipe: Recipe, plan: _Plan, model, tokenizer, ckpt_dir: Path, train_cols, eval_cols):
    """trl's config from the recipe and the plan, and the core's SFTTrainer over the tokenized columns."""
    from datasets import Dataset
    from trl import SFTConfig

    from peft_apps.core import distributed, sft_trainer

    tc = recipe.train
    precision = plan.runtime.precision
    processes = plan.world.size
    backend_args = distributed.trainer_arguments(recipe, processes, plan.runtime.device == "cuda", plan.config)
    checkpointing = tc.gradient_checkpointing and not backend_args.get("fsdp")  # FSDP checkpoints with its own
    args = SFTConfig(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=tc.batch_size // processes,  # train.batch_size is the global batch
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
        activation_checkpointing=checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
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
        **backend_args,
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
    if recipe.peft.method == "lora_plus":
        trainer.loraplus_lr_ratio = float(recipe.peft.options.get("loraplus_lr_ratio", 16.0))
        trainer.loraplus_lr_embedding = recipe.peft.options.get("loraplus_lr_embedding")
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
