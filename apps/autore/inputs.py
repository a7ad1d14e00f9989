"""Inputs for extraction, as the Python API, `predict` and `autore extract` take them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from peft_apps.core.errors import UserError


def read_inputs(inputs: list[str]) -> list[tuple[str, Any]]:
    """(name, text or DocRED document) for each input: a text file, a DocRED .json, a folder, or '-'."""
    from .docred import load_docs

    items: list[tuple[str, Any]] = []
    for spec in inputs:
        if spec == "-":
            items.append(("-", sys.stdin.read()))
            continue
        p = Path(spec)
        if p.is_dir():
            files = sorted(x for x in p.iterdir() if x.suffix in (".txt", ".json") and x.is_file())
            if not files:
                raise UserError(f"folder {p} holds no .txt or .json files")
            items.extend(read_inputs([str(x) for x in files]))
        elif not p.is_file():
            raise UserError(f"input not found: {p}")
        elif p.suffix == ".json":
            docs = load_docs(p)
            items.extend((d.get("title") or f"{p}#{i}", d) for i, d in enumerate(docs))
        else:
            items.append((str(p), p.read_text(encoding="utf-8", errors="replace")))
    return items
