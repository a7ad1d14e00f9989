"""Where a `model.base` comes from: a builtin model, a local folder, a GGUF file (converted once, its
SHA-256 recorded), or a hub id, and whether the hub can be reached (offline: one clear message)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peft_apps.core.config import ModelConfig
from peft_apps.core.errors import UserError


def resolve_base(base: str, gguf_file: str | None = None, sha256: str | None = None) -> str:
    """A local path or hub id as given; `builtin:tiny` / `builtin:small` build the offline model once; a GGUF
    file (`x.gguf`, a folder + `gguf_file`, `builtin:smollm2-135m`) is converted once into a model folder
    (`core/gguf.py`), which is returned. `sha256`: the GGUF a run recorded; another file is refused."""
    from peft_apps.core import gguf

    path = gguf.gguf_path(base, gguf_file)
    if path is not None:
        gguf.expected_sha(path, sha256)
        return str(gguf.converted_folder(path))
    if base.startswith("builtin:"):
        from peft_apps.core.tiny import builtin_model_path

        return str(builtin_model_path(base.split(":", 1)[1]))
    path = Path(base).expanduser()
    if path.exists():
        if path.is_file():
            raise UserError(f"model.base {path} is a file but not a GGUF file (it does not start with b'GGUF')",
                            hint="model.base takes a .gguf file, a model folder (save_pretrained), or a hub id")
        if not (path / "config.json").is_file():
            raise UserError(f"model directory {path} has no config.json",
                            hint="point model.base at a directory saved with save_pretrained, or a hub id")
        return str(path)
    ensure_hub_or_offline()
    return base


def resolve_model(cfg: ModelConfig) -> str:
    """`resolve_base` for a recipe's model section."""
    return resolve_base(cfg.base, cfg.gguf_file, cfg.base_sha256)


def with_base_sha(cfg: ModelConfig) -> ModelConfig:
    """The model section with `base_sha256` filled in when its base is a GGUF file (checked when given)."""
    from peft_apps.core import gguf

    path = gguf.gguf_path(cfg.base, cfg.gguf_file)
    if path is None:
        return cfg
    gguf.check_gguf(path)
    gguf.expected_sha(path, cfg.base_sha256)
    return cfg.model_copy(update={"base_sha256": gguf.sha256_of(path)})


def ensure_hub_or_offline(timeout: float = 2.0) -> bool:
    """Whether the model hub can be reached; when it cannot (and HF_HUB_OFFLINE is not set), switch to
    offline mode at once: a hub id then loads from the local cache or fails in a second with one message,
    instead of a minute of retries. Checked once per process."""
    global _HUB_CHECKED
    import os

    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"):
        return False
    if _HUB_CHECKED is not None:
        return _HUB_CHECKED
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
        _HUB_CHECKED = True
    except OSError:
        _HUB_CHECKED = False
        os.environ["HF_HUB_OFFLINE"] = "1"
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True
    return _HUB_CHECKED


_HUB_CHECKED: bool | None = None


def _offline_hint(base: str) -> str:
    return (f"{base!r} is neither a local directory nor in the local cache, and the hub cannot be reached "
            f"(offline mode: HF_HUB_OFFLINE=1). Download it on a machine with access (`hf download {base} "
            f"--local-dir DIR`) and set model.base=DIR, or use model.base=builtin:tiny for a smoke run")


def _hub_call(fn, base: str, *args: Any, **kwargs: Any):
    try:
        return fn(base, *args, **kwargs)
    except (OSError, ValueError) as e:
        text = str(e)
        if Path(base).exists() or not any(k in text for k in (
                "offline", "connect", "resolve", "not a valid model identifier", "Connection", "couldn't",
                "Could not", "does not appear", "not found", "local_files_only", "Max retries")):
            raise
        raise UserError(f"cannot load model {base!r}: {text.splitlines()[0]}", hint=_offline_hint(base)) from None
