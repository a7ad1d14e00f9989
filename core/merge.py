"""Merge an adapter into a standalone model.

For an adapter trained on a 4-bit (or 8-bit) base, the LoRA update was learnt against the
*quantized* weights, so it is merged into those weights dequantized to the compute dtype: merging
into the original full-precision checkpoint, or into the 4-bit layers themselves (which re-quantizes
the sum), would change the outputs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from peft_apps.core.config import ModelConfig
from peft_apps.core.errors import UserError


def dequantize_model(model, dtype: torch.dtype):
    """Replace every bitsandbytes Linear4bit/Linear8bitLt with an nn.Linear holding its dequantized weight."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, bnb.nn.Linear4bit):
                w = dequantize_4bit(child.weight.data, child.weight.quant_state).to(dtype)
            elif isinstance(child, bnb.nn.Linear8bitLt):
                cb, scb = child.weight.data, child.weight.SCB
                w = (cb.float() * scb.float().unsqueeze(1) / 127.0).to(dtype)
            else:
                continue
            new = torch.nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                  dtype=dtype, device=w.device)
            new.weight.data.copy_(w)
            if child.bias is not None:
                new.bias.data.copy_(child.bias.data.to(dtype))
            setattr(module, child_name, new)
    for attr in ("is_loaded_in_4bit", "is_loaded_in_8bit", "is_quantized"):
        if hasattr(model, attr):
            setattr(model, attr, False)
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    return model


def merge_adapter(adapter: str | Path, out: str | Path, base: str | None = None) -> Path:
    from peft import PeftModel

    from peft_apps.core.engine import adapter_base_config
    from peft_apps.core.modeling import compute_dtype, load_base_model, load_tokenizer

    from peft_apps.core.engine.loading import is_full_model

    adapter, out = Path(adapter), Path(out)
    if is_full_model(adapter):
        raise UserError(f"{adapter} is a fully fine-tuned model (peft.method=full): there is no adapter to merge",
                        hint="load the folder itself as the model (AutoModelForCausalLM.from_pretrained)")
    mcfg = adapter_base_config(adapter)
    if base:
        mcfg = mcfg.model_copy(update={"base": base})
    dtype = compute_dtype(mcfg)
    if torch.cuda.is_available() is False and dtype in (torch.float16,):
        dtype = torch.float32
    model = load_base_model(mcfg, quantize=True)
    from peft_apps.core.modeling import is_quantized

    if is_quantized(model):
        model = dequantize_model(model, dtype)
    import peft_apps.core.tuners  # noqa: F401  this project's tuners, registered with peft

    peft_model = PeftModel.from_pretrained(model, str(adapter))
    try:
        merged = peft_model.merge_and_unload()
    except (ValueError, NotImplementedError) as e:
        raise UserError(f"cannot merge this adapter ({peft_model.peft_config['default'].peft_type}): {e}") from None
    merged.config.use_cache = True
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out), safe_serialization=True)
    tok_src = str(adapter) if (adapter / "tokenizer_config.json").is_file() else None
    load_tokenizer(ModelConfig(**{**mcfg.model_dump(), "quantization": "none"}), tok_src).save_pretrained(str(out))
    return out


# ---- checkpoint averaging -------------------------------------------------------------------------------

_CONFIG_KEYS_FREE = ("base_model_name_or_path", "revision", "inference_mode", "peft_version")


def find_checkpoints(paths: list[str]) -> list[Path]:
    """Checkpoint folders from what the user gave: folders, glob patterns (quoted), or a run folder (all of
    its checkpoints/checkpoint-*), in step order."""
    import glob

    found: list[Path] = []
    for p in paths:
        matches = sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p]
        if not matches:
            raise UserError(f"--checkpoints {p}: nothing matches")
        for m in map(Path, matches):
            if (m / "checkpoints").is_dir() and not (m / "trainer_state.json").is_file():
                found.extend(sorted((m / "checkpoints").glob("checkpoint-*")))
            else:
                found.append(m)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    for p in unique:
        if not p.is_dir():
            raise UserError(f"{p}: not a folder")
        if not (p / "adapter_config.json").is_file() or not (p / "adapter_model.safetensors").is_file():
            raise UserError(f"{p} is not an adapter checkpoint (adapter_config.json, adapter_model.safetensors)",
                            hint="pass RUN/checkpoints/checkpoint-* of a `peft-apps train` run")
    if len(unique) < 2:
        raise UserError(f"averaging needs at least two checkpoints; got {len(unique)}",
                        hint="keep more with train.save_total_limit, or pass several runs' checkpoints")
    return sorted(unique, key=_step)


def _json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001  safetensors' own error types vary by cause
        raise UserError(f"{path}: cannot read the tensors ({e})") from None


def _step(ckpt: Path) -> int:
    state = ckpt / "trainer_state.json"
    if state.is_file():
        return int(_json(state).get("global_step", 0))
    tail = ckpt.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _run_of(ckpt: Path) -> Path | None:
    run = ckpt.parent.parent
    return run if (run / "recipe.yaml").is_file() else None


def _evaluation(ckpt: Path) -> dict | None:
    """The evaluation logged at the checkpoint's step: from its trainer_state.json, else the run's metrics.json."""
    step = _step(ckpt)
    history: list[dict] = []
    if (ckpt / "trainer_state.json").is_file():
        history = _json(ckpt / "trainer_state.json").get("log_history", [])
    run = _run_of(ckpt)
    if run is not None and (run / "metrics.json").is_file():
        history = history + _json(run / "metrics.json").get("eval_history", [])
    at = [h for h in history if h.get("step") == step and any(k.startswith("eval_") for k in h)]
    return at[-1] if at else None


def headline_metric(ckpt: Path) -> str:
    """The headline metric of the checkpoint's app (from its run's recipe.yaml)."""
    from peft_apps.core.config import load_recipe
    from peft_apps.core.registry import get_app

    run = _run_of(ckpt)
    if run is None:
        raise UserError(f"{ckpt}: no recipe.yaml in its run folder to tell the app's headline metric",
                        hint="name the metric with --metric NAME")
    recipe = load_recipe(run / "recipe.yaml", [])
    head = get_app(recipe.app).headline_for(recipe)
    if not head:
        raise UserError(f"app {recipe.app} has no headline metric", hint="name one with --metric NAME")
    return head[0]


def checkpoint_weights(ckpts: list[Path], by: str, metric: str | None = None) -> tuple[list[float], list, str | None]:
    """Normalised weights of the checkpoints (`uniform`; `metric`: proportional to the task metric; `loss`:
    proportional to 1 / eval loss) with the values they came from and the metric's name."""
    if by == "uniform":
        return [1.0 / len(ckpts)] * len(ckpts), [None] * len(ckpts), None
    if by not in ("metric", "loss"):
        raise UserError(f"--weights {by}: choose metric, loss or uniform")
    name = "loss" if by == "loss" else (metric or headline_metric(ckpts[0]))
    values = []
    for c in ckpts:
        ev = _evaluation(c)
        key = f"eval_{name}"
        if ev is None or key not in ev:
            have = ", ".join(k.removeprefix("eval_") for k in (ev or {}) if k.startswith("eval_")) or "none"
            raise UserError(f"{c}: no evaluation with {name!r} at step {_step(c)} (logged there: {have})",
                            hint="train with train.eval_steps dividing train.save_steps, so every checkpoint has "
                                 "an evaluation; or --weights uniform")
        values.append(float(ev[key]))
    if by == "loss":
        if any(v <= 0 for v in values):
            raise UserError(f"--weights loss: eval losses must be positive, got {values}")
        raw = [1.0 / v for v in values]
    else:
        if any(v < 0 for v in values) or sum(values) <= 0:
            raise UserError(f"--weights metric: {name} must be >= 0 and not all 0 to weight by; got {values}",
                            hint="--weights loss or uniform")
        raw = values
    total = sum(raw)
    return [r / total for r in raw], values, name


def average_checkpoints(ckpts: list[Path], out: Path, by: str = "uniform", metric: str | None = None) -> dict:
    """Average the adapter weights of `ckpts` (same method, ranks and targets), weighted as `by` says; writes
    an adapter folder (safetensors, config, tokenizer, the run's recipe) and merge.json. Returns the report."""
    import json
    import shutil

    from safetensors.torch import save_file

    weights, values, name = checkpoint_weights(ckpts, by, metric)
    configs = [_json(c / "adapter_config.json") for c in ckpts]
    first = {k: v for k, v in configs[0].items() if k not in _CONFIG_KEYS_FREE}
    for c, cfg in zip(ckpts[1:], configs[1:]):
        diff = sorted(k for k in set(first) | set(cfg) if k not in _CONFIG_KEYS_FREE and first.get(k) != cfg.get(k))
        if diff:
            raise UserError(f"{c} is a different adapter from {ckpts[0]} ({', '.join(diff)} differ): only "
                            "checkpoints of one method and shape can be averaged")
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for c, w in zip(ckpts, weights):
        state = _tensors(c / "adapter_model.safetensors")
        if total and set(state) != set(total):
            missing = sorted(set(total) ^ set(state))[:3]
            raise UserError(f"{c} holds other tensors than {ckpts[0]} (e.g. {', '.join(missing)})")
        for k, t in state.items():
            if k in total and t.shape != total[k].shape:
                raise UserError(f"{c}: tensor {k} is {tuple(t.shape)}, {tuple(total[k].shape)} in {ckpts[0]}")
            dtypes[k] = t.dtype
            total[k] = total.get(k, 0) + w * t.float()
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtypes[k]).contiguous() for k, v in total.items()}, str(out / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(configs[-1], indent=2))
    for f in ckpts[-1].iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template", "vocab", "merges")) and f.is_file():
            shutil.copy2(f, out / f.name)
    run = _run_of(ckpts[-1])
    if run is not None:
        shutil.copy2(run / "recipe.yaml", out / "recipe.yaml")
    report = {"weights_by": by, "metric": name,
              "checkpoints": [{"path": str(c), "step": _step(c), "value": v, "weight": round(w, 6)}
                              for c, v, w in zip(ckpts, values, weights)]}
    (out / "merge.json").write_text(json.dumps(report, indent=2))
    return report
