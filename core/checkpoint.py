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


def _jsonable(x: Any) -> Any:
    if isinstance(x, tuple):
        return {"__tuple__": [_jsonable(v) for v in x]}
    if isinstance(x, list):
        return [_jsonable(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, torch.Tensor):
        return {"__scalar_tensor__": x.item(), "dtype": str(x.dtype).removeprefix("torch.")}
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise TypeError(f"cannot store {type(x).__name__} in a checkpoint without pickle")


def _unjson(x: Any) -> Any:
    if isinstance(x, dict):
        if "__tuple__" in x:
            return tuple(_unjson(v) for v in x["__tuple__"])
        if "__scalar_tensor__" in x:
            return torch.tensor(x["__scalar_tensor__"], dtype=getattr(torch, x["dtype"]))
        return {k: _unjson(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_unjson(v) for v in x]
    return x


def save_optimizer(state_dict: dict[str, Any], folder: str | Path) -> None:
    folder = Path(folder)
    tensors: dict[str, torch.Tensor] = {}
    meta_state: dict[str, dict[str, Any]] = {}
    for pid, st in state_dict["state"].items():
        entry: dict[str, Any] = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                tensors[f"{pid}.{k}"] = v.detach().contiguous().cpu()
                entry[k] = {"__tensor__": f"{pid}.{k}"}
            else:
                entry[k] = _jsonable(v)
        meta_state[str(pid)] = entry
    save_file(tensors, str(folder / OPTIMIZER))
    meta = {"state": meta_state, "param_groups": _jsonable(state_dict["param_groups"])}
    (folder / OPTIMIZER_META).write_text(json.dumps(meta))


def load_optimizer(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    tensors = load_file(str(folder / OPTIMIZER))
    meta = json.loads((folder / OPTIMIZER_META).read_text())
    state: dict[int, dict[str, Any]] = {}
    for pid, entry in meta["state"].items():
        st = {}
        for k, v in entry.items():
            st[k] = tensors[v["__tensor__"]] if isinstance(v, dict) and "__tensor__" in v else _unjson(v)
        state[int(pid)] = st
    return {"state": state, "param_groups": _unjson(meta["param_groups"])}


def save_json_state(state_dict: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(_jsonable(state_dict)))


def load_json_state(path: str | Path) -> dict[str, Any]:
    return _unjson(json.loads(Path(path).read_text()))


def save_rng(folder: str | Path) -> None:
    folder = Path(folder)
    py = random.getstate()
    np_state = np.random.get_state()
    tensors = {"torch_cpu": torch.random.get_rng_state(),
               "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64))}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.random.get_rng_state_all()):
            tensors[f"cuda_{i}"] = s
    meta = {"python": _jsonable(py), "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    save_file(tensors, str(folder / RNG))
    (folder / RNG_META).write_text(json.dumps(meta))


def load_rng(folder: str | Path) -> bool:
    folder = Path(folder)
    if not (folder / RNG).is_file():
        return False
    tensors = load_file(str(folder / RNG))
    meta = json.loads((folder / RNG_META).read_text())
    random.setstate(_unjson(meta["python"]))
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.random.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda_"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.random.set_rng_state_all(cuda[: torch.cuda.device_count()])
    return True
