"""Inputs for extraction, as the Python API, `predict` and `autore extract` take them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from peft_apps.core.errors import UserError


def _looks_like_path(spec: str) -> bool:
    return not any(c.isspace() for c in spec.strip()) and (Path(spec).suffix in (".txt", ".json", ".md")
                                                          or "/" in spec or "\\" in spec)


def read_inputs(inputs: list[str]) -> list[tuple[str, Any]]:
    """(name, text or DocRED document) for each input: a text file, a DocRED .json, a folder, '-' (stdin),
    or the text itself (an argument that is not a file and does not look like a path). A file in a
    legacy encoding is read as Latin-1 with a warning; an empty text is kept (it has nothing to extract)
    with a warning."""
    from peft_apps.core.errors import warn
    from peft_apps.core.io import read_user_text

    from .docred import load_docs

    items: list[tuple[str, Any]] = []
    texts = 0
    for spec in inputs:
        p = Path(spec)
        if spec == "-":
            name, text = "-", sys.stdin.read()
        elif p.is_dir():
            files = sorted(x for x in p.iterdir() if x.suffix in (".txt", ".json") and x.is_file())
            if not files:
                raise UserError(f"folder {p} holds no .txt or .json files")
            items.extend(read_inputs([str(x) for x in files]))
            continue
        elif p.is_file() and p.suffix == ".json":
            docs = load_docs(p)
            items.extend((d.get("title") or f"{p}#{i}", d) for i, d in enumerate(docs))
            continue
        elif p.is_file():
            text, note = read_user_text(p)
            if note:
                warn(note)
            name = str(p)
        elif _looks_like_path(spec):
            raise UserError(f"input not found: {p}", hint="pass a .txt or DocRED .json file, a folder, '-' for "
                                                          "stdin, or the text itself in quotes")
        else:
            texts += 1
            name, text = f"text{texts}", spec
        if not text.strip():
            warn(f"{name}: empty input, nothing to extract")
        items.append((name, text))
    return items
