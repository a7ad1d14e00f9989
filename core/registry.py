"""The app registry: apps plug into the core by registering an `App`; the core never imports one.

An app is a package `peft_apps.apps.<name>` (found by scanning that namespace) or any installed
distribution exposing an entry point in the group ``peft_apps.apps``. Importing it calls
`register_app(MyApp(...))`. Registration must stay cheap (no torch import) so the CLI starts fast.

An app declares; the core runs (`core/loop.py`). The declarations: name and summary, the recipe's
`task:` schema, where its recipes, prompts and bundled data live, its `evaluate` metric module and
headline metrics. The hooks: `read` (the app's data file -> examples), `parse` (model text -> a value,
never raising), and optionally `train_records` (an example -> the records it trains on; default the
example itself), `inputs` (what `predict` accepts), `pipeline` + `generate` (only where one model call
per example is not enough), `metrics` (default: the metric module on parsed outputs and gold texts),
`convert`, `score` (other prediction formats) and `cli` (commands under `peft-apps APP ...`).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from peft_apps.core.errors import UserError
from peft_apps.core.resources import register_folders, registered_data, registered_prompts  # noqa: F401

if TYPE_CHECKING:  # pragma: no cover
    from peft_apps.core.config import Recipe
    from peft_apps.core.data import Record

ENTRY_POINT_GROUP = "peft_apps.apps"


@dataclass
class App:
    """Base class of a task app. Subclass it, then call `register_app(YourApp(...))` in the package."""

    name: str
    summary: str
    package_dir: Path  # the app's folder: holds recipes/ (and metrics/ for its metric modules)
    prompts: Path  # its prompt templates (*.j2)
    data: Path | None = None  # its bundled samples: `bundled:<app>/<file>` resolves here
    default_recipe: str = "lora"
    # The recipe's `task:` section as a pydantic model (None: the app takes no task settings).
    task_schema: Any = None
    # An `evaluate` module: a file in package_dir/metrics/ (or a path), loaded with `evaluate.load(path)`.
    metric: str | None = None
    # The metrics a report leads with; the first is what `train.select_by: auto` keeps the best adapter by.
    headline: tuple[str, ...] = ()
    # The app's sub-tasks (e.g. a reviewer's necessity / comment / refine): `--task T` on train, eval and
    # score sets the recipe's `task.task` to T (and a train run's folder gets a `-T` suffix).
    subtasks: tuple[str, ...] = ()
    # The `task:` key `--task` / `--target` sets (e.g. an exam app's target variant: `task.target`).
    subtask_key: str = "task"
    # Extra typer commands mounted as `peft-apps <app> ...` (e.g. `testgen check`).
    cli: Callable[[], Any] | None = None
    # The app `peft-apps demo` runs when none is named (the first such app, else the first with a demo).
    quickstart: bool = False

    # ---- declarations --------------------------------------------------------------------------
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

    def headline_for(self, recipe: Recipe) -> tuple[str, ...]:
        """The headline metrics of a recipe's run (default: `headline`; an app whose metrics depend on the
        recipe's task settings, e.g. its sub-task, overrides this)."""
        return self.headline

    def task(self, recipe: Recipe) -> Any:
        """The recipe's `task:` section validated against `task_schema` (a UserError naming the key)."""
        from peft_apps.core.config import validate_task

        if self.task_schema is None:
            if recipe.task:
                raise UserError(f"app {self.name!r} takes no task settings; got: {', '.join(recipe.task)}")
            return None
        return validate_task(recipe, self.task_schema)

    @property
    def metric_path(self) -> Path | None:
        if self.metric is None:
            return None
        p = Path(self.metric)
        return p if p.is_absolute() else self.package_dir / "metrics" / p

    def load_metric(self):
        """The app's metric as an `evaluate` module, loaded by path (a Hub metric cannot load offline)."""
        import evaluate

        if self.metric_path is None:
            raise UserError(f"app {self.name!r} declares no metric module")
        return evaluate.load(str(self.metric_path))

    def training_records(self, recipe: Recipe, split: str) -> list[Record]:
        """The chat records `split` ('train' or 'eval') trains on: the core's split of the app's examples."""
        from peft_apps.core.loop import examples

        return self.train_records(examples(self, recipe, split), recipe)

    # ---- hooks: data -----------------------------------------------------------------------------
    def read(self, path: Path, recipe: Recipe, labelled: bool = True, prompts: bool = True) -> list[Record]:
        """The examples in one of the app's data files, in file order. An example is a `Record`: its id
        (the file's own, else its 0-based position), the prompt (empty if `generate` builds its own), the
        gold answer as text in `completion` (empty when not `labelled`), anything else in `meta`.
        `prompts=False` (scoring): the prompts are not needed and the app may leave them empty."""
        raise NotImplementedError(f"app {self.name!r} does not implement read()")

    def train_records(self, examples: list[Record], recipe: Recipe) -> list[Record]:
        """The records the model trains on, from examples (one per example unless the app says otherwise)."""
        return examples

    def inputs(self, items: list[str], recipe: Recipe) -> list[Record]:
        """What `predict` accepts: data files in the app's format, else plain texts (see `from_text`)."""
        out: list[Record] = []
        for item in items:
            p = Path(item)
            if p.is_dir():
                raise UserError(f"input {p} is a folder; expected a file in the app's data format, or a text")
            if p.is_file():
                out.extend(self.read(p, recipe, labelled=False))
            elif p.suffix in (".json", ".jsonl", ".txt", ".csv") and not any(c.isspace() for c in item):
                raise UserError(f"input not found: {p}", hint="pass an existing file, or the text itself in quotes")
            else:
                out.append(self.from_text(item, str(len(out)), recipe))
        return out

    def from_text(self, text: str, id: str, recipe: Recipe) -> Record:
        raise UserError(f"app {self.name!r} takes files, not plain text: {text[:60]!r} is not a file")

    # ---- hooks: model --------------------------------------------------------------------------
    def pipeline(self, engine, recipe: Recipe) -> Any:
        """The object `generate` calls, built around a loaded engine (default: the engine itself)."""
        return engine

    def generate(self, pipeline, examples: list[Record], recipe: Recipe) -> list[str | dict[str, Any]]:
        """Model text per example; a dict {"output": text, ...} adds fields to the prediction row ("stats":
        counts summed into the report). Default: one batched chat call per example."""
        from peft_apps.core.loop import generation_options

        return pipeline.chat([ex.prompt for ex in examples], options=generation_options(recipe, self.task(recipe)))

    # ---- hooks: scoring -----------------------------------------------------------------------
    def parse(self, output: str, example: Record, task: Any, stats: Counter) -> Any:
        """Model text -> the value metrics compare. Never raises: what cannot be used is dropped and
        counted in `stats`."""
        return output.strip()

    def metrics(self, examples: list[Record], parsed: list[Any], task: Any) -> dict[str, Any]:
        """Metrics by name (default: the metric module on parsed outputs and gold texts)."""
        return self.load_metric().compute(predictions=parsed, references=[ex.completion for ex in examples])

    def score(self, gold: Path, pred: Path, recipe: Recipe, only_predicted: bool = False,
              by: str = "auto") -> dict[str, Any]:
        """Score a predictions file against a gold file, joined by `core.matching.MATCH_RULE` (`by`: auto, id or
        position); override to accept other prediction formats."""
        from peft_apps.core.loop import score_files

        return score_files(self, gold, pred, recipe, only_predicted, by)

    def convert(self, source: Path, out: Path, **options: Any) -> dict[str, Any]:
        raise UserError(f"app {self.name!r} does not implement `convert`")

    # ---- hooks: serving --------------------------------------------------------------------------
    # `peft-apps serve` mounts `POST /v1/apps/<name>/<serve_action>` for an app that sets it: the body is
    # validated against `serve_request()` (a pydantic model) and answered by `serve`.
    serve_action: str | None = None

    def serve_request(self) -> Any:
        """The pydantic model of the app endpoint's request body."""
        raise NotImplementedError(f"app {self.name!r} has no serve endpoint")

    def serve(self, engine, runs: dict[str, Path], request: Any) -> dict[str, Any]:
        """Answer one request of the app endpoint. `runs`: the served runs of this app (name -> folder);
        `engine(names)`: an engine (the `Engine` API) whose adapters are those served runs, generation
        batched with every other request's."""
        raise NotImplementedError(f"app {self.name!r} has no serve endpoint")

    def served_run(self, runs: dict[str, Path], model: str | None) -> str:
        """The run a request names (`model`), or the only served run of this app."""
        if model is not None:
            if model not in runs:
                raise UserError(f"model {model!r} is not a served {self.name} run; served: {', '.join(runs) or '(none)'}")
            return model
        if len(runs) != 1:
            raise UserError(f"{len(runs)} {self.name} runs are served ({', '.join(runs)}): name one in \"model\"")
        return next(iter(runs))

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
    template those recipes set in `data.template`; the data folder and metric module, when declared, exist;
    and the app implements `read`. A broken app fails here, with a ValueError naming what is wrong, not
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
    if app.data is not None and not Path(app.data).is_dir():
        raise ValueError(f"app {app.name!r}: data folder {app.data} does not exist")
    if app.metric is not None and not app.metric_path.is_file():
        raise ValueError(f"app {app.name!r}: metric module {app.metric_path} does not exist")
    if type(app).read is App.read:
        raise ValueError(f"app {app.name!r} does not implement read(path, recipe, labelled)")
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
    register_folders(app.name, app.prompts, app.data)
    return app


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
