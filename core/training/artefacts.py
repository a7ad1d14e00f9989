"""What a finished run leaves: metrics.json, loss.png, the adapter (or the best one), the tokenizer,
recipe.yaml, the model card (README.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from peft_apps.core.config import Recipe
from peft_apps.core.distributed import backend
from peft_apps.core.training.plan import _Plan


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


def _metrics(recipe: Recipe, plan: _Plan, trainer, result, train_seconds: float, last, train_rep, eval_rep):
    rt = plan.runtime
    metrics: dict[str, Any] = {
        "app": recipe.app, "recipe": recipe.name, "method": recipe.peft.method,
        "base": recipe.model.base, "quantized": plan.quantized, "precision": rt.precision,
        "batching": plan.batching, "attn_implementation": rt.attn_implementation,
        "dtype": str(rt.dtype).removeprefix("torch."), "device": rt.device, "loss_kernel": plan.loss_kernel,
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss, "train_seconds": round(train_seconds, 2),
        "useful_tokens_per_second": round(_all_ranks(trainer, trainer.useful_tokens) / max(train_seconds, 1e-9), 1),
        "processes": plan.world.size,
        "distributed": backend(recipe, plan.world.size),
        "resumed_from": last,
        "data": {"train": train_rep.as_dict(), "eval": eval_rep.as_dict()},
        **_parameter_counts(trainer.model),
        **_peak_memory(rt.device),
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


def _parameter_counts(model) -> dict[str, int]:
    """Trainable and all parameters (peft's count: a 4-bit weight counts its unpacked size)."""
    unwrapped = getattr(model, "module", model)
    if hasattr(unwrapped, "get_nb_trainable_parameters"):
        trainable, total = unwrapped.get_nb_trainable_parameters()
    else:
        trainable = sum(p.numel() for p in unwrapped.parameters() if p.requires_grad)
        total = sum(p.numel() for p in unwrapped.parameters())
    return {"trainable_parameters": int(trainable), "total_parameters": int(total)}


def _peak_memory(device: str) -> dict[str, float]:
    """This process's peak resident memory (MiB), and on CUDA the peak allocated GPU memory."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20 if sys.platform == "darwin" else 1024)
    out = {"peak_rss_mib": round(rss, 1)}
    if device == "cuda":
        import torch

        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / (1 << 20), 1)
    return out


def _all_ranks(trainer, count: int) -> int:
    """`count` summed over the ranks (each counted its own batches)."""
    if trainer.args.world_size <= 1:
        return count
    import torch

    return int(trainer.accelerator.reduce(torch.tensor(count, device=trainer.args.device), reduction="sum").item())


def _write_artefacts(out: Path, recipe: Recipe, trainer, tokenizer, metrics: dict, t_start: float,
                     plan: _Plan) -> None:
    """The adapter (safetensors: the last one, or the best by `train.select_by`), tokenizer, resolved
    recipe, metrics.json and loss.png; written by rank 0 (every rank takes part in gathering a sharded
    adapter)."""
    import shutil

    from peft_apps.core.io import atomic_write

    best = trainer.best_dir / "best.json" if trainer.best_dir is not None else None
    # (the trainer's record of its best, else the file: every rank decides alike)
    selected = best is not None and (getattr(trainer, "_best", None) is not None or best.is_file())
    if not selected:
        trainer.save_adapter(out)
    if not plan.world.main:
        return
    out.mkdir(parents=True, exist_ok=True)
    if selected:
        for f in trainer.best_dir.iterdir():
            if f.name.startswith(("adapter_", "model", "config.json", "generation_config")) or f.name == "README.md":
                shutil.copy2(f, out / f.name)
        metrics["selected"] = json.loads(best.read_text())
    tokenizer.save_pretrained(str(out))
    # the base model as plain peft, vLLM and TGI resolve it: the hub id as the recipe names it, or the model's
    # local folder (a builtin model's is its built copy; the builtin name stays in recipe.yaml)
    config_file = out / "adapter_config.json"
    if config_file.is_file():  # a full fine-tune's folder holds the model itself (config.json), no adapter
        from peft_apps.core.bases import resolve_model

        base = recipe.model.base
        if base.startswith("builtin:") or Path(base).expanduser().exists() or recipe.model.gguf_file:
            base = str(Path(resolve_model(recipe.model)).resolve())  # a GGUF base: its converted folder
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
