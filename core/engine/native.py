"""Kernels built on this machine at first use: one decoding step's attention (`decode_attention.c`), and a
bfloat16 linear layer's product for a few rows in float32 arithmetic on CPUs without AMX (`linear_bf16.c`,
`pack_linear` / `linear_bf16`; why: `matmuls.py`; `PEFT_APPS_NATIVE_LINEAR=0` switches it off).

torch's SDPA kernel reads a decoding row's keys at about 8 GB/s on two cores: it is made for long queries,
and a decoding row has one query per head (a few per KV head). No library on the CPU stack here does this
part faster (oneDNN's graph SDPA and IPEX are not available), so the engine builds a small C kernel with the
machine's C compiler (`$CC`, else `cc`, `gcc` or `clang`; OpenMP) once per query-group size, head size and
element type, caches it under `cache_dir()/kernels` keyed by the source, the compiler flags and the CPU, and
calls it through ctypes. Where it cannot be built (no compiler, no OpenMP) or does not apply (another dtype,
a head size not a multiple of 16, autograd), the caller keeps SDPA: `decode_attention` returns None.
`PEFT_APPS_NATIVE_ATTENTION=0` switches it off.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import threading
import warnings
from pathlib import Path

import torch

from ..resources import cache_dir

SOURCE = Path(__file__).with_name("decode_attention.c")
LINEAR_SOURCE = Path(__file__).with_name("linear_bf16.c")
_DTYPES = {torch.bfloat16: 1, torch.float32: 0}
_lock = threading.Lock()
_kernels: dict[tuple[torch.dtype, int, int], object] = {}  # (dtype, group, head dim) -> function, or None
_warned = False
_calls = [0]  # decoding steps' layer calls that the kernel ran (`calls`)


def calls() -> int:
    """How many attention calls the kernel has run in this process (a counter for the server's statistics:
    a step whose calls ran here read each row's keys from its first attended one)."""
    return _calls[0]


def enabled() -> bool:
    return os.environ.get("PEFT_APPS_NATIVE_ATTENTION", "1") != "0"


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc)
    return next((p for p in map(shutil.which, ("cc", "gcc", "clang")) if p), None)


def _cpu() -> bytes:
    """What `-march=native` depends on: the CPU's model and feature flags (a cache folder shared between
    machines must not hand one machine's build to another)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features"))]
        return "\n".join(sorted(set(lines))).encode()
    except OSError:
        return f"{platform.machine()} {platform.processor()}".encode()


def build(dtype: torch.dtype, group: int, dim: int) -> Path:
    """The kernel's shared library for one element type, query-group size and head size: built into the
    cache at first use (under a file lock: processes sharing the cache build it once), else the cached one.
    Raises RuntimeError with the compiler's message when it cannot be built."""
    return _build(SOURCE, [f"-DGROUP={group}", f"-DHEAD_DIM={dim}", f"-DBF16={_DTYPES[dtype]}"])


def _build(source: Path, defines: list[str]) -> Path:
    cc = _compiler()
    if cc is None:
        raise RuntimeError(f"CC={os.environ['CC']} not found" if os.environ.get("CC")
                           else "no C compiler found (cc, gcc or clang; or set CC)")
    flags = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", *defines]
    tag = hashlib.sha256(source.read_bytes() + " ".join([cc, *flags]).encode() + _cpu()).hexdigest()[:20]
    out = cache_dir() / "kernels" / f"{source.stem}-{tag}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".lock"), "w") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not POSIX: processes may build it twice, harmlessly
            pass
        if out.exists():
            return out
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        done = subprocess.run([cc, *flags, str(source), "-o", str(tmp)], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"{Path(cc).name} failed: {(done.stderr or done.stdout).strip()[-2000:]}")
        os.replace(tmp, out)
    return out


def _kernel(dtype: torch.dtype, group: int, dim: int):
    key = (dtype, group, dim)
    if key in _kernels:
        return _kernels[key]
    global _warned
    with _lock:
        if key not in _kernels:
            try:
                fn = ctypes.CDLL(str(build(dtype, group, dim))).decode_attention
                fn.restype = None
                fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 3 + [ctypes.c_long] * 4 \
                    + [ctypes.c_float, ctypes.c_int]
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                fn = None
                if not _warned:
                    _warned = True
                    warnings.warn(f"decoding attention stays on torch's SDPA: its kernel could not be built ({e})",
                                  RuntimeWarning, stacklevel=3)
            _kernels[key] = fn
    return _kernels[key]


def decode_attention(q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
                     scale: float | None) -> torch.Tensor | None:
    """One decoding step's attention: `q` [rows, KV heads, queries per KV head, dim], `key`/`value` [rows,
    KV heads, keys, dim] (any layout with the dim contiguous, the two alike), `mask` [rows, keys] boolean
    (True: attended). Each row reads its keys from its first attended one. Returns [rows, KV heads, queries
    per KV head, dim], or None where the kernel does not apply or cannot be built (the caller's SDPA then)."""
    dtype = q.dtype
    if dtype not in _DTYPES or q.device.type != "cpu" or not enabled():
        return None
    b, kvh, g, d = q.shape
    n = key.shape[2]
    strides = key.stride()
    if (d % 16 or d > 512 or not 1 <= g <= 16 or b == 0 or key.dtype != dtype or value.dtype != dtype
            or mask.dtype != torch.bool or key.shape != (b, kvh, n, d) or value.shape != key.shape
            or mask.shape != (b, n) or value.stride() != strides or strides[3] != 1 or (mask.stride(1) != 1 and n > 1)
            or torch.is_grad_enabled() and (q.requires_grad or key.requires_grad or value.requires_grad)):
        return None
    fn = _kernel(dtype, g, d)
    if fn is None:
        return None
    q = q.contiguous()
    out = torch.empty_like(q)
    fn(q.data_ptr(), key.data_ptr(), value.data_ptr(), mask.data_ptr(), out.data_ptr(), b, kvh, n,
       strides[0], strides[1], strides[2], mask.stride(0),
       d ** -0.5 if scale is None else float(scale), torch.get_num_threads())
    _calls[0] += 1
    return out


_linear: list = []  # the linear kernel's library, or None where it cannot be built (`_linear_library`)


def linear_enabled() -> bool:
    return os.environ.get("PEFT_APPS_NATIVE_LINEAR", "1") != "0"


def _linear_library():
    if _linear:
        return _linear[0]
    with _lock:
        if not _linear:
            try:
                lib = ctypes.CDLL(str(_build(LINEAR_SOURCE, [])))
                lib.pack_weight.restype = lib.linear_bf16.restype = None
                lib.pack_weight.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_long] * 2
                lib.linear_bf16.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_void_p,
                                            ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_int]
            except (RuntimeError, OSError, subprocess.SubprocessError):  # no AVX-512 BF16 here, or no compiler
                lib = None
            _linear.append(lib)
    return _linear[0]


def pack_linear(weight: torch.Tensor) -> torch.Tensor | None:
    """A bfloat16 weight [out, in] packed for `linear_bf16` (`linear_bf16.c`), or None where the kernel does
    not apply (another dtype or device, `out` not a multiple of 16, `in` odd) or cannot be built (a CPU
    without AVX-512 BF16, no compiler) or `PEFT_APPS_NATIVE_LINEAR=0`."""
    if (not linear_enabled() or weight.dtype != torch.bfloat16 or weight.device.type != "cpu" or weight.dim() != 2
            or weight.shape[0] % 16 or weight.shape[1] % 2 or weight.numel() == 0):
        return None
    lib = _linear_library()
    if lib is None:
        return None
    w = weight.detach().contiguous()
    out = torch.empty_like(w)
    lib.pack_weight(w.data_ptr(), out.data_ptr(), w.shape[0], w.shape[1])
    return out


def linear_bf16(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """`x` [rows, in] (bfloat16) times the weight `packed` by `pack_linear`: [rows, out] in bfloat16, each
    row's sums in float32 in the order of `in`, whatever the other rows."""
    xf = x.float().contiguous()
    m, k = xf.shape
    n = packed.shape[0]
    y = torch.empty((m, n), dtype=torch.bfloat16)  # host: a CPU kernel's output
    if m:
        _linear_library().linear_bf16(xf.data_ptr(), m, k, packed.data_ptr(), n, k, y.data_ptr(),
                                      torch.get_num_threads())
    return y
