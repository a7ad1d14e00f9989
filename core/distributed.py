"""Training in N processes: DDP, FSDP (QLoRA too) and DeepSpeed ZeRO, from the recipe, launched by accelerate.

    train.distributed   none | ddp | fsdp | deepspeed-zero2 | deepspeed-zero3   (none with N > 1 means ddp)
    train.offload       FSDP / ZeRO: parameters and optimizer state in CPU memory
    train.batch_size    the global batch: each of N processes takes batch_size / N records of it

`peft-apps train APP ... --num-processes N` writes `accelerate.yaml` (and `deepspeed.json` for ZeRO) into
the run folder and starts `accelerate launch --config_file RUN/accelerate.yaml -m peft_apps.core.cli train
...` in N processes. The same `python -m peft_apps.core.cli train ...` under `accelerate launch` or
`torchrun` (one machine or several) reads its rank from the environment. Either way, the trainer's
settings come from the recipe (`trainer_arguments`): the config files are for people and for launching
by hand, never a second source.

What keeps N processes equal to one (`RankBatches`): every rank draws the same global batches from one
seeded order (length-sorted or random), takes its own share of each, and the loss is divided by the
global count of completion tokens; a rank whose share of the last, short batch is empty gets a copy of
a record with no trained tokens, so every record is trained on exactly once per epoch.

On CPU, accelerate's MULTI_CPU launcher needs mpirun; the generated config uses the torchrun launcher
(MULTI_GPU with `use_cpu`), and each process trains on the CPU over gloo.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from peft_apps.core.errors import UserError
from peft_apps.core.methods import METHODS

if TYPE_CHECKING:
    from peft_apps.core.config import Recipe

BACKENDS = ("none", "ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3")
LAUNCH_FILE = "accelerate.yaml"
DEEPSPEED_FILE = "deepspeed.json"


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's place, from the launcher's environment (torchrun and accelerate set RANK, WORLD_SIZE)."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def backend(recipe: Recipe, processes: int) -> str:
    """The recipe's backend; `none` with more than one process is DDP."""
    b = recipe.train.distributed
    return "ddp" if b == "none" and processes > 1 else b


def check(recipe: Recipe, processes: int, cuda_devices: int) -> None:
    """Refuse, before anything loads, a combination that cannot run: one message naming the setting and what
    would work."""
    b = backend(recipe, processes)
    method, quant = recipe.peft.method, recipe.model.quantization
    if processes < 1:
        raise UserError(f"--num-processes {processes}: give 1 or more")
    if cuda_devices and processes > cuda_devices and world().size == 1:
        raise UserError(f"--num-processes {processes}: this machine has {cuda_devices} GPU(s)",
                        hint=f"--num-processes {cuda_devices}, or several machines (README: training on several GPUs)")
    if recipe.train.batch_size % max(1, processes):
        raise UserError(f"train.batch_size={recipe.train.batch_size} is the global batch and does not split over "
                        f"{processes} processes", hint=f"a multiple of {processes}")
    if b.startswith("deepspeed"):
        if importlib.util.find_spec("deepspeed") is None:
            raise UserError(f"train.distributed={b} needs DeepSpeed, which is not installed",
                            hint="pip install -e \".[deepspeed]\" (on a CUDA machine), or train.distributed=fsdp / ddp")
        if not cuda_devices:
            raise UserError(f"train.distributed={b} needs CUDA GPUs; this machine has none",
                            hint="train.distributed=ddp trains on CPUs (gloo)")
    if b == "fsdp" and not cuda_devices:
        raise UserError("train.distributed=fsdp needs CUDA GPUs: accelerate shards only across GPUs (CPU processes "
                        "would train unsharded, as DDP)", hint="train.distributed=ddp trains on CPUs (gloo)")
    if b in ("fsdp", "deepspeed-zero3"):
        if METHODS[method].prompt or METHODS[method].config == "peft:AdaptionPromptConfig":
            raise UserError(f"peft.method={method} cannot train under train.distributed={b}: its virtual tokens "
                            "are one parameter that sharding splits", hint="train.distributed=ddp or deepspeed-zero2")
        if method == "adalora":
            raise UserError(f"peft.method=adalora cannot train under train.distributed={b}: its rank budget reads "
                            "whole matrices every step", hint="train.distributed=ddp or deepspeed-zero2")
        if quant == "int8":
            raise UserError(f"model.quantization=int8 cannot be sharded by train.distributed={b}",
                            hint="model.quantization=nf4 (QLoRA shards under FSDP and ZeRO-3) or none")
    if recipe.train.offload and b not in ("fsdp", "deepspeed-zero2", "deepspeed-zero3"):
        raise UserError(f"train.offload=true needs train.distributed=fsdp or deepspeed-zero2/3 (it is {b})")
    if b == "fsdp" and recipe.train.batching == "packing":
        raise UserError("train.batching=packing under train.distributed=fsdp is not supported here",
                        hint="train.batching=group_by_length")


def shard_factors(recipe: Recipe, processes: int) -> tuple[float, float]:
    """What one process holds of (the weights, the optimizer state and gradients) under the backend: FSDP and
    ZeRO-3 shard both over N, ZeRO-2 the optimizer state and gradients; with offload they leave the GPU."""
    b = backend(recipe, processes)
    n = max(1, processes)
    if recipe.train.offload and b != "ddp":
        return (1 / n if b in ("fsdp", "deepspeed-zero3") else 1.0), 0.0
    return {"fsdp": (1 / n, 1 / n), "deepspeed-zero3": (1 / n, 1 / n), "deepspeed-zero2": (1.0, 1 / n)}.get(b, (1.0, 1.0))


def layer_classes(config) -> list[str]:
    """The decoder-layer classes FSDP wraps one by one (transformers' `_no_split_modules` of the architecture)."""
    from transformers import AutoModelForCausalLM

    cls = AutoModelForCausalLM._model_mapping.get(type(config), None)
    names = list(getattr(cls, "_no_split_modules", None) or [])
    if not names:
        raise UserError(f"train.distributed=fsdp: no layer class to wrap is known for {type(config).__name__}",
                        hint="train.distributed=ddp or deepspeed-zero3")
    return names


def fsdp_config(recipe: Recipe, layers: Sequence[str]) -> dict[str, Any]:
    """transformers' `fsdp_config` for the recipe: FSDP2, one unit per decoder layer, the original parameters
    (LoRA's frozen and trainable ones side by side), weights loaded on rank 0 only and broadcast (CPU-RAM
    efficient: a 70B base is read once, not N times), FSDP's own activation checkpointing."""
    return {
        "version": 2,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "transformer_layer_cls_to_wrap": list(layers),
        "use_orig_params": True,
        "cpu_ram_efficient_loading": True,
        "sync_module_states": True,
        "reshard_after_forward": True,
        "state_dict_type": "FULL_STATE_DICT",
        "activation_checkpointing": recipe.train.gradient_checkpointing,
        "cpu_offload": recipe.train.offload,
    }


def deepspeed_config(recipe: Recipe, b: str) -> dict[str, Any]:
    """A DeepSpeed config for ZeRO-2 or ZeRO-3; "auto" leaves batch, clipping and precision to the trainer
    (set from the recipe), so the two never disagree."""
    stage = 3 if b == "deepspeed-zero3" else 2
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True,
                            "reduce_bucket_size": "auto"}
    if recipe.train.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if stage == 3:
        zero.update({"stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto",
                     "stage3_gather_16bit_weights_on_model_save": True})
    return {"train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
            "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
            "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}, "zero_optimization": zero}


def trainer_arguments(recipe: Recipe, processes: int, cuda: bool, config) -> dict[str, Any]:
    """The SFTConfig arguments of the backend (none for one process)."""
    b = backend(recipe, processes)
    if processes <= 1 and b == "none":
        return {}
    args: dict[str, Any] = {"ddp_backend": "nccl" if cuda else "gloo", "ddp_find_unused_parameters": False,
                            "average_tokens_across_devices": True}
    if b == "fsdp":
        args.update(fsdp=True, fsdp_config=fsdp_config(recipe, layer_classes(config)))
    elif b.startswith("deepspeed"):
        args["deepspeed"] = deepspeed_config(recipe, b)
    return args


def accelerate_config(recipe: Recipe, processes: int, cuda: bool, config=None, machines: int = 1) -> dict[str, Any]:
    """accelerate's launch config for the recipe (what `accelerate config` would write)."""
    b = backend(recipe, processes)
    precision = {"bf16": "bf16", "fp16": "fp16"}.get(recipe.train.mixed_precision, "no")
    cfg: dict[str, Any] = {"compute_environment": "LOCAL_MACHINE", "num_processes": processes,
                           "num_machines": machines, "machine_rank": 0, "main_training_function": "main",
                           "mixed_precision": precision if cuda else "no", "rdzv_backend": "static",
                           "same_network": True, "downcast_bf16": "no", "use_cpu": not cuda,
                           "distributed_type": "MULTI_GPU"}
    if b == "fsdp":
        fc = fsdp_config(recipe, layer_classes(config) if config is not None else [])
        fc["transformer_layer_cls_to_wrap"] = ",".join(fc["transformer_layer_cls_to_wrap"])
        fc["offload_params"] = fc.pop("cpu_offload")  # accelerate's name for it
        cfg["distributed_type"] = "FSDP"
        cfg["fsdp_config"] = {f"fsdp_{k}": v for k, v in fc.items()}
    elif b.startswith("deepspeed"):
        cfg["distributed_type"] = "DEEPSPEED"
        cfg["deepspeed_config"] = {"deepspeed_config_file": DEEPSPEED_FILE, "zero3_init_flag": b.endswith("3")}
    return cfg


def write_launch_files(run_dir: Path, recipe: Recipe, processes: int, cuda: bool, config=None) -> Path:
    """`accelerate.yaml` (and `deepspeed.json`) in the run folder; returns the accelerate config's path."""
    import yaml

    from peft_apps.core.io import atomic_write

    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = accelerate_config(recipe, processes, cuda, config)
    if "deepspeed_config" in cfg:
        ds = run_dir / DEEPSPEED_FILE
        atomic_write(ds, json.dumps(deepspeed_config(recipe, backend(recipe, processes)), indent=2))
        cfg["deepspeed_config"]["deepspeed_config_file"] = str(ds.resolve())
    head = (f"# written by peft-apps from {recipe.name}'s recipe (train.distributed="
            f"{backend(recipe, processes)}); the trainer's settings come from recipe.yaml\n")
    if not cuda:
        head += ("# CPU: accelerate's MULTI_CPU launcher needs mpirun; MULTI_GPU's torchrun launcher starts the "
                 "processes and each trains on the CPU over gloo\n")
    path = run_dir / LAUNCH_FILE
    atomic_write(path, head + yaml.safe_dump(cfg, sort_keys=False))
    return path


def launch_command(config_file: Path, child_args: Sequence[str]) -> list[str]:
    """`accelerate launch --config_file FILE -m peft_apps.core.cli ARGS...` with this interpreter."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
            "-m", "peft_apps.core.cli", *child_args]


class RankBatches:
    """This rank's share of every global batch, in one order all ranks draw from (`seed`, epoch).

    `order` is "sorted" (length-grouped, `core.sampling.SortedBatchSampler` over the global batch size) or
    "random". Each global batch of `batch_size` records is cut into `world` near-equal parts; part `rank`
    is this rank's batch. An empty part (the last batch shorter than `world`) is the index
    `len(lengths) + i`: record i again, which `MaskedCopies` serves with nothing to train on.
    Yields lists of indices: a batch sampler (transformers passes it through unsharded).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, world: int = 1, rank: int = 0, seed: int = 0,
                 order: str = "sorted"):
        # (no `batch_size` attribute: accelerate would take the batches for fixed-size ones)
        self.lengths, self.global_batch, self.world, self.rank = list(lengths), batch_size, world, rank
        self.seed, self.order, self.epoch = seed, order, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_batches(self) -> list[list[int]]:
        import torch

        if self.order == "sorted":
            from peft_apps.core.sampling import SortedBatchSampler

            s = SortedBatchSampler(self.lengths, self.global_batch, seed=self.seed)
            s.set_epoch(self.epoch)
            flat = list(iter(s))
        else:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            flat = torch.randperm(len(self.lengths), generator=g).tolist()  # host: indices
        return [flat[i:i + self.global_batch] for i in range(0, len(flat), self.global_batch)]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            part = _split(batch, self.world)[self.rank]
            yield part or [len(self.lengths) + batch[0]]

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.global_batch)


def _split(batch: list[int], parts: int) -> list[list[int]]:
    """`batch` in `parts` consecutive pieces whose sizes differ by at most one (the larger ones first)."""
    q, r = divmod(len(batch), parts)
    out, start = [], 0
    for p in range(parts):
        size = q + (1 if p < r else 0)
        out.append(batch[start:start + size])
        start += size
    return out


class MaskedCopies:
    """A tokenized dataset whose indices past its end are copies of its records with no trained tokens
    (`completion_mask` all zero): the filler `RankBatches` gives a rank with nothing left in a batch."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self.dataset)
        row = dict(self.dataset[int(i) % n])
        if i >= n and "completion_mask" in row:
            row["completion_mask"] = [0] * len(row["completion_mask"])
        return row
