"""Prompt templates as files: `prompts/<app>/<name>.j2`, Jinja2 with strict undefined variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from peft_apps.core.errors import UserError
from peft_apps.core.resources import prompts_dir, registered_prompts


@lru_cache(maxsize=64)
def _compile(text: str):
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False,
                             autoescape=False)
    return env.from_string(text)


def template_path(app: str, name: str) -> Path:
    """A template file path as given, or `name`.j2 in the app's prompts folder: the one the app registered
    (so an app from another distribution ships its own), else this package's `prompts/<app>/`."""
    p = Path(name)
    if p.suffix in {".j2", ".jinja", ".txt"} and p.is_file():
        return p
    folder = registered_prompts(app) or prompts_dir(app)
    found = folder / f"{name}.j2"
    if not found.is_file():
        names = sorted(x.stem for x in folder.glob("*.j2"))
        raise UserError(f"app {app!r} has no prompt template {name!r}",
                        hint=f"templates: {', '.join(names) or '(none)'} (in {folder}), or a .j2 file path")
    return found


def render(app: str, name: str, where: str = "record", **variables: Any) -> str:
    import jinja2

    path = template_path(app, name)
    try:
        return _compile(path.read_text(encoding="utf-8")).render(**variables).strip()
    except jinja2.UndefinedError as e:
        raise UserError(f"{where}: prompt template {path.name} needs a field the record lacks ({e.message})") \
            from None


def template_fields(app: str, name: str) -> list[str]:
    """The variables a template reads (the fields a record or input must have)."""
    import jinja2
    from jinja2 import meta

    source = template_path(app, name).read_text(encoding="utf-8")
    return sorted(meta.find_undeclared_variables(jinja2.Environment().parse(source)))
