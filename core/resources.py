"""Paths of the package data (prompts/, data/) for editable installs and wheels alike."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


# The folders each registered app declared: app name -> {"prompts": Path, "data": Path}. The registry
# records them here when an app registers, so that this low layer resolves them without importing it.
_FOLDERS: dict[str, dict[str, Path]] = {}


def register_folders(app: str, prompts: Path | None = None, data: Path | None = None) -> None:
    _FOLDERS[app] = {k: Path(v) for k, v in (("prompts", prompts), ("data", data)) if v is not None}


def registered_prompts(app: str) -> Path | None:
    """The prompts folder a registered app declared (None: no such app registered)."""
    return _FOLDERS.get(app, {}).get("prompts")


def registered_data(app: str) -> Path | None:
    """The bundled-data folder a registered app declared (None: none declared or no such app)."""
    return _FOLDERS.get(app, {}).get("data")


def package_root() -> Path:
    return Path(str(files("peft_apps")))


def prompts_dir(app: str) -> Path:
    return package_root() / "prompts" / app


def data_dir(*parts: str) -> Path:
    return package_root().joinpath("data", *parts)


def cache_dir() -> Path:
    """Where built artefacts (the offline tiny models) are cached: $PEFT_APPS_CACHE or ~/.cache/peft-apps."""
    import os

    root = os.environ.get("PEFT_APPS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "peft-apps"
    )
    return Path(root)


def bundled_or_path(spec: str) -> Path:
    """`bundled:APP/FILE` names a sample APP ships: in the data folder APP registered (an app from another
    distribution ships its own), else this package's data/APP/. Anything else is a path."""
    if spec.startswith("bundled:"):
        app, _, rest = spec.removeprefix("bundled:").partition("/")
        folder = registered_data(app)
        return folder.joinpath(*rest.split("/")) if folder is not None else data_dir(app, *rest.split("/"))
    return Path(spec)
