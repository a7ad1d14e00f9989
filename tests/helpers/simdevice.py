"""A simulated accelerator for CPU-only machines, so CI catches tensors put on the wrong device.

torch's PrivateUse1 backend is registered from Python and renamed `simgpu`. Under `SimDevice()`, every
tensor op is intercepted: tensors on `simgpu` are wrappers around CPU data, real kernels compute the
values (so results equal a CPU run), and an op that mixes a `simgpu` tensor with a CPU tensor of one or
more dimensions raises "Expected all tensors to be on the same device", as CUDA does. As on CUDA,
0-dim CPU tensors mix freely and CPU index tensors may index device tensors. Autograd works.

Why not FakeTensorMode with a fake `cuda` device: on torch's CPU build `.to("cuda")`, scalar fills and
parameter initialisation stop with "PyTorch is not linked with support for cuda devices", and
`.tolist()` (which decoding needs) is not allowed on fake tensors.

    with SimDevice() as dev:
        model.to(dev)
        engine = Engine(model, tokenizer)   # any code that follows the model's device runs unchanged
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

NAME = "simgpu"
_registered = False

# ops that take tensors of two devices on CUDA too: copies, and CPU index tensors (torch moves them)
_MIXED_OK = {"aten::copy_", "aten::_to_copy", "aten::_copy_from", "aten::_copy_from_and_resize",
             "aten::lift_fresh", "aten::_local_scalar_dense", "aten::index.Tensor", "aten::index_put_",
             "aten::_index_put_impl_", "aten::index_put"}


def device() -> torch.device:
    """The simulated device (registered on first use; the registration lasts for the process).

    It reports itself unavailable, so `torch.accelerator`, accelerate and transformers never pick it on
    their own: only code that is handed the device (`model.to(dev)`) uses it."""
    global _registered
    if not _registered:
        from torch.utils import backend_registration as br

        class Module(br._DummyBackendModule):
            def is_available(self) -> bool:
                return False

            def get_amp_supported_dtype(self):
                return [torch.float16, torch.bfloat16]

            # `torch.random.fork_rng` (peft's EVA forks the RNG) saves and restores each device's state
            def get_rng_state(self, device=None):
                return torch.get_rng_state()

            def set_rng_state(self, state, device=None) -> None:
                pass

        class Hook(br._DummyPrivateUse1Hook):
            def is_available(self) -> bool:
                return False

        br._setup_privateuseone_for_python_backend(NAME, backend_module=Module(), hook=Hook())
        _registered = True
    return torch.device(NAME, 0)


class SimTensor(torch.Tensor):
    """CPU data on the simulated device."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        r = torch.Tensor._make_wrapper_subclass(cls, elem.shape, strides=elem.stride(),
                                                storage_offset=elem.storage_offset(), dtype=elem.dtype,
                                                layout=elem.layout, device=torch.device(NAME, 0),
                                                requires_grad=elem.requires_grad)
        r.elem = elem
        return r

    def tolist(self):  # a device -> host copy on a real accelerator
        return self.elem.tolist()

    def __repr__(self) -> str:
        return f"SimTensor({self.elem!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


class DeviceMismatch(RuntimeError):
    pass


def _run(func, args, kwargs):
    name = func._schema.name
    if name == "aten::_fused_sdp_choice":
        return 0  # SDPA's math kernel: the fused ones have no implementation for this device
    kinds = set()

    def note(t):
        if isinstance(t, SimTensor):
            kinds.add("sim")
        elif isinstance(t, torch.Tensor) and t.dim() > 0:
            kinds.add("cpu")

    tree_map(note, (args, kwargs))
    if len(kinds) > 1 and name not in _MIXED_OK:
        raise DeviceMismatch(f"Expected all tensors to be on the same device, but found at least two devices, "
                             f"{NAME}:0 and cpu! ({name})")
    targets = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.device)]
    if targets:  # factories and .to(device): the result lives where asked; its data stays on the CPU
        on_sim = targets[0].type == NAME
        cpu = torch.device("cpu")
        args = tuple(cpu if isinstance(a, torch.device) else a for a in args)
        kwargs = {k: cpu if isinstance(v, torch.device) else v for k, v in kwargs.items()}
    elif name in ("aten::copy_", "aten::_to_copy"):
        on_sim = isinstance(args[0], SimTensor)
    else:
        on_sim = "sim" in kinds
    plain_args, plain_kwargs = tree_map(lambda t: t.elem if isinstance(t, SimTensor) else t, (args, kwargs))
    out = func(*plain_args, **plain_kwargs)
    if args and isinstance(args[0], SimTensor) and out is plain_args[0]:
        return args[0]  # in-place ops return their own input
    if not on_sim:
        return out
    return tree_map(lambda t: SimTensor(t) if type(t) is torch.Tensor else t, out)


class SimDevice(TorchDispatchMode):
    """Context in which the simulated device exists; yields the device."""

    def __enter__(self):
        dev = device()
        self._lift = torch._C._only_lift_cpu_tensors()
        torch._C._set_only_lift_cpu_tensors(True)  # torch.tensor(..., device=) builds on the CPU, then moves
        super().__enter__()
        return dev

    def __exit__(self, *exc):
        torch._C._set_only_lift_cpu_tensors(self._lift)
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})
