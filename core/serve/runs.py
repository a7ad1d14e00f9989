"""The runs a server is given (names, one shared base model) and the address it listens on, checked before
any model loads."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_apps.core.errors import UserError


@dataclass
class Run:
    name: str
    folder: Path
    recipe: Any  # its Recipe
    model: Any  # the ModelConfig it was trained on


def read_runs(items: list[str]) -> list[Run]:
    """`DIR` or `NAME=DIR` per item: each a training run's folder, names unique (default: the folder's
    name), every run on one base model."""
    from peft_apps.core.config import load_recipe
    from peft_apps.core.engine.loading import adapter_base_config
    from peft_apps.core.run_folder import check_run_folder, is_full_model

    runs: list[Run] = []
    for item in items:
        name, sep, path = item.partition("=")
        folder = Path(path if sep else item)
        if not sep:
            name = folder.resolve().name
        if not name or any(c in name for c in "/ ,") or name.startswith("__"):
            raise UserError(f"{item}: {name!r} cannot name a served model (no '/', ',' or spaces; not '__...')")
        check_run_folder(folder)
        if is_full_model(folder):
            raise UserError(f"{folder} is a fully fine-tuned model, not an adapter",
                            hint=f"serve it as the base: peft-apps serve --base {folder}")
        if not (folder / "recipe.yaml").is_file():
            raise UserError(f"{folder} has no recipe.yaml: it is not a run of this tool, so its app is unknown")
        if any(r.name == name for r in runs):
            raise UserError(f"two runs are named {name!r}; name them: peft-apps serve NAME=DIR ...")
        runs.append(Run(name, folder, load_recipe(folder / "recipe.yaml"), adapter_base_config(folder)))
    bases = {(r.model.base, r.model.revision) for r in runs}
    if len(bases) > 1:
        listed = "; ".join(f"{r.name}: {r.model.base}" + (f"@{r.model.revision}" if r.model.revision else "")
                           for r in runs)
        raise UserError(f"the runs were trained on different base models ({listed}); one server holds one base",
                        hint="start one server per base model (on its own --port)")
    return runs


def check_port(host: str, port: int) -> None:
    """Fail before the model loads when the address cannot be bound."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except PermissionError:
            raise UserError(f"--port {port}: not allowed to listen there (ports below 1024 need root)") from None
        except OSError as e:
            if e.errno in (98, 48):  # EADDRINUSE (Linux, macOS)
                raise UserError(f"port {port} on {host} is in use", hint="choose another with --port") from None
            raise UserError(f"cannot listen on {host}:{port}: {e.strerror}") from None
