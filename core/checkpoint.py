"""Checkpoint state without pickle: optimizer, scheduler, scaler and RNG states as safetensors + JSON.

transformers' Trainer writes `optimizer.pt`, `scheduler.pt`, `rng_state.pth` and `training_args.bin`
with `torch.save` (pickle). The core's trainer swaps these for the functions below, so a checkpoint
folder holds only safetensors and JSON and resuming never unpickles anything.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

OPTIMIZER = "optimizer.safetensors"
OPTIMIZER_META = "optimizer.json"
SCHEDULER = "scheduler.json"
SCALER = "scaler.json"
RNG = "rng_state.safetensors"
RNG_META = "rng_state.json"


def _jsonable(x: Any, tensors: dict[str, torch.Tensor] | None = None, key: str = "") -> Any:
    """`x` as JSON. With `tensors`, each tensor of one or more dimensions goes there under its path key
    (the JSON keeps `{"__tensor__": key}`): optimizer states nest such tensors, bitsandbytes' 8-bit and
    paged optimizers in a dict inside each parameter's state. 0-dim tensors stay in the JSON."""
    if isinstance(x, tuple):
        return {"__tuple__": [_jsonable(v, tensors, f"{key}.{i}") for i, v in enumerate(x)]}
    if isinstance(x, list):
        return [_jsonable(v, tensors, f"{key}.{i}") for i, v in enumerate(x)]
    if isinstance(x, dict):
        return {str(k): _jsonable(v, tensors, f"{key}.{k}") for k, v in x.items()}
    if isinstance(x, torch.Tensor):
        if x.dim() > 0:
            if tensors is None:
                raise TypeError(f"a {tuple(x.shape)} tensor belongs in the safetensors file, not JSON")
            tensors[key] = x.detach().contiguous().cpu()
            return {"__tensor__": key}
        return {"__scalar_tensor__": x.item(), "dtype": str(x.dtype).removeprefix("torch.")}
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise TypeError(f"cannot store {type(x).__name__} in a checkpoint without pickle")


def _unjson(x: Any, tensors: dict[str, torch.Tensor] | None = None) -> Any:
    """The inverse of `_jsonable`; `tensors` resolves its `{"__tensor__": key}` entries."""
    if isinstance(x, dict):
        if "__tensor__" in x and tensors is not None:
            return tensors[x["__tensor__"]]
        if "__tuple__" in x:
            return tuple(_unjson(v, tensors) for v in x["__tuple__"])
        if "__scalar_tensor__" in x:
            return torch.tensor(x["__scalar_tensor__"], dtype=getattr(torch, x["dtype"]))  # host: optimizer scalars (step) stay on the CPU
        return {k: _unjson(v, tensors) for k, v in x.items()}
    if isinstance(x, list):
        return [_unjson(v, tensors) for v in x]
    return x


def save_optimizer(state_dict: dict[str, Any], folder: str | Path) -> None:
    """Any optimizer's `state_dict()` (torch's, bitsandbytes' 8-bit and paged ones) as safetensors + JSON."""
    folder = Path(folder)
    tensors: dict[str, torch.Tensor] = {}
    meta_state = {str(pid): _jsonable(st, tensors, str(pid)) for pid, st in state_dict["state"].items()}
    save_file(tensors, str(folder / OPTIMIZER))
    meta = {"state": meta_state, "param_groups": _jsonable(state_dict["param_groups"])}
    (folder / OPTIMIZER_META).write_text(json.dumps(meta))


def load_optimizer(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    tensors = load_file(str(folder / OPTIMIZER))
    meta = json.loads((folder / OPTIMIZER_META).read_text())
    state = {int(pid): _unjson(entry, tensors) for pid, entry in meta["state"].items()}
    return {"state": state, "param_groups": _unjson(meta["param_groups"])}


def save_json_state(state_dict: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(_jsonable(state_dict)))


def load_json_state(path: str | Path) -> dict[str, Any]:
    return _unjson(json.loads(Path(path).read_text()))


def _rng_files(rank: int) -> tuple[str, str]:
    """Rank 0's RNG files keep their one-process names; rank r's carry `_r`."""
    if rank == 0:
        return RNG, RNG_META
    return RNG.replace(".", f"_{rank}.", 1), RNG_META.replace(".", f"_{rank}.", 1)


def save_rng(folder: str | Path, rank: int = 0) -> None:
    """This process's RNG states (each rank of a multi-process run its own files)."""
    folder = Path(folder)
    rng, rng_meta = _rng_files(rank)
    py = random.getstate()
    np_state = np.random.get_state()
    tensors = {"torch_cpu": torch.random.get_rng_state(),
               "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64))}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.random.get_rng_state_all()):
            tensors[f"cuda_{i}"] = s
    meta = {"python": _jsonable(py), "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    save_file(tensors, str(folder / rng))
    (folder / rng_meta).write_text(json.dumps(meta))


def load_rng(folder: str | Path, rank: int = 0) -> bool:
    """Restore this rank's RNG states; a rank the checkpoint has no files for (it was written by fewer
    processes) takes rank 0's."""
    folder = Path(folder)
    rng, rng_meta = _rng_files(rank)
    if not (folder / rng).is_file():
        rng, rng_meta = RNG, RNG_META
    if not (folder / rng).is_file():
        return False
    tensors = load_file(str(folder / rng))
    meta = json.loads((folder / rng_meta).read_text())
    random.setstate(_unjson(meta["python"]))
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.random.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda_"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.random.set_rng_state_all(cuda[: torch.cuda.device_count()])
    return True
