"""Prompt templates as files: `prompts/<app>/<name>.j2`, Jinja2 with strict undefined variables.

A template's own whitespace at the edges of the rendered prompt (the file's last newline, the newline a
closing `{% endif %}` line leaves) is not part of the prompt; the values the template prints are, whole:
a prompt that ends in a newline (code) or starts with spaces keeps them, in training and in prediction.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from peft_apps.core.errors import UserError
from peft_apps.core.resources import prompts_dir, registered_prompts


# around every value the template prints while rendering: the edges of the output that lie outside every
# value are the template's own text (no prompt holds these control characters; any that did are kept)
_OPEN, _CLOSE = "\x00\x02", "\x03\x00"


def _mark(value: Any) -> Any:
    return f"{_OPEN}{value}{_CLOSE}" if isinstance(value, str) and value else value


@lru_cache(maxsize=64)
def _compile(text: str):
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False,
                             autoescape=False, finalize=_mark)
    return env.from_string(text)


def _template_edges_stripped(marked: str) -> str:
    """`marked` less the whitespace at its edges that lies outside every printed value, markers removed."""
    start, end = 0, len(marked)
    while start < end and marked[start].isspace():
        start += 1
    while end > start and marked[end - 1].isspace():
        end -= 1
    return marked[start:end].replace(_OPEN, "").replace(_CLOSE, "")


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
        return _template_edges_stripped(_compile(path.read_text(encoding="utf-8")).render(**variables))
    except jinja2.UndefinedError as e:
        raise UserError(f"{where}: prompt template {path.name} needs a field the record lacks ({e.message})") \
            from None


def template_fields(app: str, name: str) -> list[str]:
    """The variables a template reads (the fields a record or input must have)."""
    import jinja2
    from jinja2 import meta

    source = template_path(app, name).read_text(encoding="utf-8")
    return sorted(meta.find_undeclared_variables(jinja2.Environment().parse(source)))
