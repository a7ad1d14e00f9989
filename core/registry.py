"""The app registry: apps plug into the core by registering an `App`; the core never imports one.

An app is a package `peft_apps.apps.<name>` (found by scanning that namespace) or any installed
distribution exposing an entry point in the group ``peft_apps.apps``. Importing it calls
`register_app(MyApp())`. Registration must stay cheap (no torch import) so the CLI starts fast.

An `App` tells the core where its recipes and prompts live and how to turn its data into
prompt/completion chat records; the rest (evaluation, prediction, scoring, conversion, extra CLI
commands) are optional hooks with clear errors when an app does not provide them.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from peft_apps.core.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from peft_apps.core.config import Recipe
    from peft_apps.core.data import Record

ENTRY_POINT_GROUP = "peft_apps.apps"


@dataclass
class App:
    """Base class of a task app. Subclass it, then call `register_app(YourApp())` in the package."""

    name: str
    summary: str
    package_dir: Path  # the app's folder: holds recipes/
    prompts: Path  # prompts/<app>/
    default_recipe: str = "lora"
    # The recipe's `task:` section as a pydantic model (None: the app takes no task settings).
    task_schema: Any = None
    # Extra typer commands mounted as `peft-apps <app> ...` (e.g. `testgen check`).
    cli: Callable[[], Any] | None = None

    # ---- recipes -------------------------------------------------------------------------------
    @property
    def recipes_dir(self) -> Path:
        return self.package_dir / "recipes"

    def recipes(self) -> dict[str, Path]:
        return {p.stem: p for p in sorted(self.recipes_dir.glob("*.yaml"))}

    def recipe_path(self, recipe: str | None) -> Path:
        recipe = recipe or self.default_recipe
        as_path = Path(recipe)
        if as_path.suffix in {".yaml", ".yml"} and as_path.is_file():
            return as_path
        found = self.recipes().get(recipe)
        if found is None:
            raise UserError(
                f"app {self.name!r} has no recipe {recipe!r}",
                hint=f"choose one of: {', '.join(self.recipes()) or '(none)'}, or pass a path to a .yaml file",
            )
        return found

    def task(self, recipe: Recipe) -> Any:
        """The recipe's `task:` section validated against `task_schema` (a UserError naming the key)."""
        from peft_apps.core.config import validate_task

        if self.task_schema is None:
            if recipe.task:
                raise UserError(f"app {self.name!r} takes no task settings; got: {', '.join(recipe.task)}")
            return None
        return validate_task(recipe, self.task_schema)

    # ---- hooks -----------------------------------------------------------------------------------
    def training_records(self, recipe: Recipe, split: str) -> list[Record]:
        """Prompt/completion chat records for `split` ('train' or 'eval')."""
        raise NotImplementedError

    def evaluate(self, adapter: str, recipe: Recipe, split: str, out_dir: Path) -> dict[str, Any]:
        raise UserError(f"app {self.name!r} does not implement `eval`")

    def predict(self, adapter: str, inputs: list[str], recipe: Recipe | None, **options: Any) -> list[Any]:
        raise UserError(f"app {self.name!r} does not implement `predict`")

    def convert(self, source: Path, out: Path, **options: Any) -> dict[str, Any]:
        raise UserError(f"app {self.name!r} does not implement `convert`")

    def score(self, gold: Path, pred: Path, **options: Any) -> dict[str, Any]:
        raise UserError(f"app {self.name!r} does not implement `score`")

    def demo_inputs(self, recipe: Recipe, work_dir: Path) -> list[str]:
        """Inputs for `predict` at the end of `peft-apps demo` (files written under work_dir, or texts)."""
        return []


_APPS: dict[str, App] = {}
_DISCOVERED = False


_NAME = re.compile(r"[a-z][a-z0-9_-]*")


def register_app(app: App) -> App:
    """Register `app` under `app.name`, after checking it up front (as peft's `register_peft_method`
    does): a valid name no other app holds, a recipes folder whose recipes all validate (their `task:`
    sections against `task_schema` too) and include `default_recipe`, and a prompts folder holding every
    template those recipes set in `data.template`. A broken app fails here, with a ValueError naming what is wrong, not
    when a user first runs it. Registration reads a few small files and imports no torch.
    """
    from peft_apps.core.config import load_recipe

    if not isinstance(app.name, str) or not _NAME.fullmatch(app.name):
        raise ValueError(f"invalid app name {app.name!r}: lower-case letters, digits, '-' and '_', "
                         f"starting with a letter")
    other = _APPS.get(app.name)
    if other is not None and Path(other.package_dir).resolve() != Path(app.package_dir).resolve():
        raise ValueError(f"app name {app.name!r} is registered twice: by {other.package_dir} and {app.package_dir}")
    recipes = app.recipes()
    if not recipes:
        raise ValueError(f"app {app.name!r} has no recipes: put YAML files in {app.recipes_dir}")
    if app.default_recipe not in recipes:
        raise ValueError(f"app {app.name!r}: default_recipe {app.default_recipe!r} is not among its recipes "
                         f"({', '.join(recipes)})")
    if not Path(app.prompts).is_dir():
        raise ValueError(f"app {app.name!r}: prompts folder {app.prompts} does not exist")
    for name, path in recipes.items():
        try:
            recipe = load_recipe(path, app=app.name)
            if recipe.app != app.name:
                raise UserError(f"it says app: {recipe.app}")
            app.task(recipe)
        except UserError as e:
            raise ValueError(f"app {app.name!r}: recipe {name!r} ({path}) is invalid: {e}") from None
        template = recipe.data.template
        if "template" in recipe.data.model_fields_set and not (Path(template).suffix in {".j2", ".jinja", ".txt"} and Path(template).is_file()) \
                and not (Path(app.prompts) / f"{template}.j2").is_file():
            raise ValueError(f"app {app.name!r}: recipe {name!r} names template {template!r}, which is not "
                             f"in {app.prompts}")
    _APPS[app.name] = app
    return app


def registered_prompts(app_name: str) -> Path | None:
    """The prompts folder a registered app declared (None: no such app registered)."""
    a = _APPS.get(app_name)
    return Path(a.prompts) if a is not None else None


def discover() -> None:
    """Import every package under `peft_apps.apps` and every `peft_apps.apps` entry point, once."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    try:
        import peft_apps.apps as apps_pkg

        for info in pkgutil.iter_modules(apps_pkg.__path__, prefix="peft_apps.apps."):
            if info.ispkg:
                importlib.import_module(info.name)
    except ImportError:  # pragma: no cover - a broken install
        raise
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        if isinstance(obj, App):
            register_app(obj)


def list_apps() -> dict[str, App]:
    discover()
    return dict(sorted(_APPS.items()))


def get_app(name: str) -> App:
    apps = list_apps()
    if name not in apps:
        raise UserError(f"unknown app {name!r}", hint=f"registered apps: {', '.join(apps) or '(none)'}")
    return apps[name]
