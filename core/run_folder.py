"""A run folder holds one run.

`train` writes `run.json` into its folder before training: a run id and the recipe settings that decide the
weights (everything but where and how it logs). Every checkpoint gets a copy, so a checkpoint says which
run, trained how, wrote it.

- A new run in a folder that already holds a run stops before anything loads, unless `--force`, which
  clears the old run first. Checkpoints of two runs never mix, and rotation (`train.save_total_limit`)
  only ever sees one run's checkpoints.
- `--resume` continues the folder's own run from its last checkpoint, says which, and refuses a checkpoint
  whose recipe differs from the one given (naming the settings, e.g. `train.lr`), unless told to
  (`--allow-recipe-change`).
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from peft_apps.core.errors import UserError, warn
from peft_apps.core.io import atomic_write

# a `config.Recipe`: config sits above this module (it checks run folders), so the type is named loosely
Recipe = Any

RUN_FILE = "run.json"
# What a run leaves in its folder: a folder holding any of these holds a run (run.json alone does not: a run
# that stopped before its first checkpoint left nothing to lose or resume).
RUN_MARKERS = ("recipe.yaml", "adapter_config.json", "model.safetensors", "metrics.json")
# Settings that do not change the weights a run ends on: a resumed run may change them.
NOT_TRAJECTORY = {"train.output_dir", "train.report_to", "train.logging_steps", "train.save_total_limit",
                  "train.memory_check", "train.save_steps", "train.distributed", "train.offload"}
# What a run writes before its first checkpoint (with the launch config of a multi-process run).
RUN_FILES = {RUN_FILE, "checkpoints", "tensorboard", "accelerate.yaml", "deepspeed.json"}


def trajectory(recipe: Recipe) -> dict[str, Any]:
    """The recipe's settings that decide the weights, flattened to `section.key`."""
    out: dict[str, Any] = {}
    for section, values in json.loads(json.dumps(recipe.model_dump(mode="json"), default=str)).items():
        if section in ("eval", "name"):
            continue  # evaluation settings do not change training
        if isinstance(values, dict):
            out.update({f"{section}.{k}": v for k, v in values.items() if f"{section}.{k}" not in NOT_TRAJECTORY})
        else:
            out[section] = values
    return out


def holds_run(folder: Path) -> bool:
    folder = Path(folder)
    return folder.is_dir() and (any((folder / m).exists() for m in RUN_MARKERS)
                                or any((folder / "checkpoints").glob("checkpoint-*")))


def only_run_file(folder: Path) -> bool:
    return folder.is_dir() and {p.name for p in folder.iterdir()} <= RUN_FILES


def check_new(folder: Path, force: bool = False) -> None:
    """Before anything loads: a new run may go into `folder` (new, empty, or holding a run and `force`)."""
    folder = Path(folder)
    if holds_run(folder):
        if not force:
            raise UserError(f"{folder} already holds a run",
                            hint="pass --force to replace it, --resume to continue it, or "
                                 "train.output_dir=OTHER for a new folder")
    elif folder.is_dir() and any(folder.iterdir()) and not only_run_file(folder):
        raise UserError(f"{folder} is not empty and holds no run: train.output_dir must be a new or empty folder",
                        hint="choose another train.output_dir; nothing there was changed")


def start(folder: Path, recipe: Recipe, force: bool = False) -> dict[str, Any]:
    """Begin a new run in `folder` (when training is about to start): `check_new`, clear an old run, write
    run.json."""
    folder = Path(folder)
    check_new(folder, force)
    if folder.is_dir():
        _clear(folder)  # an old run (with force), or what a run that never reached a checkpoint left
    folder.mkdir(parents=True, exist_ok=True)
    info = {"run_id": uuid.uuid4().hex[:12], "app": recipe.app, "recipe": recipe.name,
            "trajectory": trajectory(recipe)}
    _write(folder, info)
    return info


def _write(folder: Path, info: dict[str, Any]) -> None:
    atomic_write(Path(folder) / RUN_FILE, json.dumps(info, indent=2, ensure_ascii=False, default=str) + "\n")


def _clear(folder: Path) -> None:
    """Remove a run's files from `folder` (the folder itself and anything else in it stay)."""
    for p in folder.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def read(folder: Path) -> dict[str, Any] | None:
    p = Path(folder) / RUN_FILE
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{p}: not valid JSON; the run folder is damaged",
                        hint="start a new run with --force") from None


def resume_point(folder: Path, recipe: Recipe, allow_change: bool = False) -> tuple[str, dict[str, Any]]:
    """The checkpoint `--resume` continues from: the last one of the folder's run. A checkpoint of another
    run, or one whose recipe differs from `recipe` (unless `allow_change`), is refused with the reason."""
    from transformers.trainer_utils import get_last_checkpoint

    folder = Path(folder)
    ckpt_dir = folder / "checkpoints"
    last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    if last is None:
        raise UserError(f"--resume: no checkpoint found under {ckpt_dir}")
    run = read(folder)
    ckpt = read(Path(last))
    if run is None or ckpt is None:
        raise UserError(f"--resume: {last} carries no run id (written before runs had one, or not by this tool)",
                        hint="start the run anew with --force")
    if ckpt.get("run_id") != run.get("run_id"):
        raise UserError(f"--resume: {last} belongs to run {ckpt.get('run_id')}, not to this folder's run "
                        f"{run.get('run_id')}", hint="start the run anew with --force")
    now = trajectory(recipe)
    then = ckpt.get("trajectory", {})
    changed = sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))
    if "model.base_sha256" in changed and then.get("model.base_sha256"):  # never resumable on another base
        raise UserError(f"--resume: the GGUF base {now.get('model.base')} changed under the run: its SHA-256 is "
                        f"{str(now.get('model.base_sha256'))[:16]}..., {Path(last).name} was trained on "
                        f"{str(then.get('model.base_sha256'))[:16]}...",
                        hint="put back the file the run was trained on, or start a new run (--force)")
    if changed and not allow_change:
        shown = "; ".join(f"{k}: {then.get(k)!r} -> {now.get(k)!r}" for k in changed[:6])
        raise UserError(f"--resume: {Path(last).name} was trained with another recipe ({shown})",
                        hint="resume with the recipe it was trained with, or pass --allow-recipe-change to "
                             "continue with the new settings")
    if changed:
        warn(f"resuming {Path(last).name} with changed settings: {', '.join(changed)}")
        run["trajectory"] = now  # the checkpoints from here on carry the settings they are trained with
        _write(folder, run)
    return last, ckpt


def stamp_checkpoint(folder: Path, checkpoint: Path) -> None:
    """Copy the run's run.json into a checkpoint just written."""
    src = Path(folder) / RUN_FILE
    if src.is_file() and Path(checkpoint).is_dir():
        shutil.copyfile(src, Path(checkpoint) / RUN_FILE)


def is_full_model(d: str | Path) -> bool:
    """A run folder of `peft.method=full`: the whole model (config.json + safetensors weights), no adapter."""
    d = Path(d)
    return (not (d / "adapter_config.json").is_file() and (d / "config.json").is_file()
            and any(d.glob("model*.safetensors")))


def check_run_folder(d: str | Path, app: str = "APP") -> None:
    """A UserError unless `d` is what `peft-apps train` writes: an adapter folder or a full model's."""
    d = Path(d)
    if not (d / "adapter_config.json").is_file() and not is_full_model(d):
        raise UserError(f"{d} is not an adapter folder (no adapter_config.json)",
                        hint=f"train one with `peft-apps train {app}` and pass its output folder")
