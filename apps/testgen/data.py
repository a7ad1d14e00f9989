"""testgen records: methods2test's runnable subset, HumanEval-X, and pairs mined from Python repositories.

Every source has one shape, one JSON object per line:

    {"id": ..., "prompt": code that ends where the model goes on, "reference": the gold rest,
     "lang": "java" | "python" (optional: guessed), "meta": {...} (optional)}

- methods2test runnable subset (Storhaug & Li 2024, `fm+fc+c+m+f+t+tc`): `prompt` is the focal class
  (focal method with its body; constructor and other method signatures; fields), then the test class
  header and the test method's signature; `reference` is the rest of the test method.
- HumanEval-X Java: `prompt` is a function's signature and doc comment, `reference` its body.
- mined Python pairs (`peft-apps convert testgen --repo PATH`): `prompt` is the focal function, the test
  module's imports and the test's signature; `reference` its body; `meta` says where they live, so the
  generated test can be run (pass rate, coverage).

A `prediction` field (a model's output from the study) is kept in meta, never used as gold.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable

from peft_apps.core.data import Record
from peft_apps.core.errors import UserError, warn

LANGS = ("java", "python")


def guess_lang(row: dict[str, Any]) -> str:
    lang = str(row.get("lang") or row.get("language") or "").lower()
    if lang in LANGS:
        return lang
    if str(row.get("id", "")).lower().startswith("java/") or "class " in row.get("prompt", "") and "{" in row.get(
            "prompt", ""):
        return "java"
    return "python"


def read_rows(path: Path) -> tuple[list[dict[str, Any]], Counter]:
    """The usable rows of a JSONL file; each unusable one is reported (file, line, field) and counted."""
    from peft_apps.core.data import read_jsonl

    rows, skipped = [], Counter()
    for pos, (n, row) in enumerate(read_jsonl(path)):
        bad = [k for k in ("prompt",) if not isinstance(row.get(k), str) or not row[k].strip()]
        if bad:
            warn(f"{path}, line {n} (id {row.get('id', '?')}): field '{bad[0]}' is missing or empty; skipped")
            skipped["no prompt"] += 1
            continue
        row.setdefault("id", str(pos))  # no id: the record's 0-based position in the file
        rows.append(row)
    if not rows:
        raise UserError(f"{path}: no usable records", hint='one JSON object per line: {"id", "prompt", "reference"}')
    return rows, skipped


def read_records(path: Path, labelled: bool, render: Callable[[str, dict[str, Any], str], str],
                 system: str | None) -> list[Record]:
    rows, skipped = read_rows(path)
    out = []
    missing = 0
    for row in rows:
        ref = row.get("reference")
        if labelled and not isinstance(ref, str):
            missing += 1
            ref = ""
        lang = guess_lang(row)
        fields = {"prompt": row["prompt"], "lang": lang}
        meta = {"lang": lang, "code_prompt": row["prompt"], **(row.get("meta") or {})}
        if "prediction" in row:
            meta["study_prediction"] = row["prediction"]
        out.append(Record.simple(str(row["id"]), render(lang, fields, f"{path}, id {row['id']}"),
                                 ref if labelled and isinstance(ref, str) else "", system=system, **meta))
    if missing:
        warn(f"{path}: {missing} record(s) without a 'reference' (gold): scored against an empty test")
    return out
