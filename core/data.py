"""From an app's records to token ids: chat template, completion-only labels, counted truncation.

An app hands the core `Record`s (prompt messages + completion text). The core renders them with the
model's chat template, tokenizes prompt and completion separately (so training sees exactly the ids
that inference will feed: the prompt alone, then generation), marks completion tokens for the loss,
and truncates to `max_length` with a report of what was cut or dropped: never silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from peft_apps.core.errors import UserError


@dataclass
class Record:
    id: str
    prompt: list[dict[str, str]]  # chat messages ending with the user's turn
    completion: str
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def simple(cls, id: str, user: str, completion: str, system: str | None = None, **meta: Any) -> "Record":
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return cls(id=str(id), prompt=msgs, completion=completion, meta=meta)


class Records(list):
    """An app's examples from one file, in file order, with the entries its reader skipped: `skipped` maps
    a skipped entry's id to why (needs a picture, no options, ...). Scoring uses it to tell a prediction
    for a skipped entry (left out, counted) from one with an unknown id."""

    def __init__(self, items=(), skipped: dict[str, str] | None = None):
        super().__init__(items)
        self.skipped: dict[str, str] = dict(skipped or {})


# ---- reading files ----------------------------------------------------------------------------


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object); a bad line is a UserError naming file and line."""
    from peft_apps.core.io import read_text

    path = Path(path)
    # split on newlines only: JSON strings may hold U+2028 and friends, which str.splitlines splits on
    for lineno, line in enumerate(read_text(path, "data file").split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def require(obj: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    """`obj[key]`, or a UserError naming the place (file:line or document) and the field."""
    if key not in obj:
        raise UserError(f"{where}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise UserError(f"{where}: field {key!r} must be {names}, got {type(value).__name__}")
    return value


def write_jsonl(path: str | Path, rows) -> int:
    """Write rows as JSONL, atomically (never half a file); returns how many."""
    from peft_apps.core.io import atomic_write

    lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]
    atomic_write(path, "".join(lines))
    return len(lines)


# ---- rendering and tokenizing -----------------------------------------------------------------


def render_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # Base models without a chat template: plain text turns.
    text = "".join(f"{m['content']}\n\n" for m in messages)
    return (tokenizer.bos_token or "") + text


def render_completion(tokenizer, messages: list[dict[str, str]], completion: str, prompt_text: str) -> str:
    """The assistant's turn as the chat template renders it after `prompt_text`, through its end-of-turn
    token and no further: what a template puts after that token (Qwen's and the builtin models' newline
    before the next turn) is not the model's to write, so it is neither trained nor needed to stop."""
    if getattr(tokenizer, "chat_template", None):
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": completion}],
                                             tokenize=False)
        if full.startswith(prompt_text):
            return _through_end_of_turn(tokenizer, full[len(prompt_text):], completion)
    return completion + (tokenizer.eos_token or "")


def _through_end_of_turn(tokenizer, tail: str, completion: str) -> str:
    """`tail` cut after the first special token that follows the completion's text (the end of the turn).
    That token should be the tokenizer's EOS, where generation stops; a template that ends turns with
    another one is warned about (a model trained on it would not stop)."""
    at = tail.find(completion) if completion else 0
    start = at + len(completion) if at >= 0 else 0
    specials = [t for t in getattr(tokenizer, "all_special_tokens", []) if t]
    specials += [t.content if hasattr(t, "content") else str(t)
                 for t in getattr(tokenizer, "added_tokens_decoder", {}).values()
                 if getattr(t, "special", False)]
    found = [(i, t) for t in set(specials) if (i := tail.find(t, start)) >= 0]
    if not found:
        return tail
    i, token = min(found, key=lambda x: (x[0], -len(x[1])))
    eos = tokenizer.eos_token
    if eos and token != eos:
        from peft_apps.core.errors import warn

        warn(f"the chat template ends the assistant's turn with {token!r}, but the tokenizer's EOS is {eos!r}: "
             f"generation would not stop at the end of a turn",
             hint=f"set the tokenizer's eos_token to {token!r} (as the family's instruct models do)")
    return tail[: i + len(token)]


@dataclass
class TokenizeReport:
    records: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: int = 0
    tokens: int = 0
    completion_tokens: int = 0
    max_length: int = 0
    truncated_ids: list[str] = field(default_factory=list)
    dropped_ids: list[str] = field(default_factory=list)
    # records whose prompt/completion boundary merged tokens when the conversation was tokenized whole: their
    # completion was tokenized on its own, so that training sees the prompt ids inference feeds
    boundary_retokenized: int = 0

    def as_dict(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["truncated_ids"] = self.truncated_ids[:20]
        d["dropped_ids"] = self.dropped_ids[:20]
        return d

    def summary(self, split: str) -> str:
        s = f"{split}: {self.kept}/{self.records} records, {self.tokens} tokens"
        if self.truncated:
            s += f"; {self.truncated} truncated to {self.max_length} tokens (e.g. {', '.join(self.truncated_ids[:3])})"
        if self.dropped:
            s += f"; {self.dropped} dropped as longer than {self.max_length} (e.g. {', '.join(self.dropped_ids[:3])})"
        return s


def encode_record(tokenizer, rec: Record) -> tuple[list[int], list[int], bool]:
    """(prompt ids, completion ids, whether they are the whole conversation tokenized at once).

    The conversation is rendered by the chat template and tokenized once, as the model's vendor trains on
    it; the prompt part must equal the prompt tokenized alone (what inference feeds before generating), so
    the two are split there. Where the boundary merges tokens (the prompt alone is no prefix of the whole),
    the completion is tokenized on its own instead and the caller counts it."""
    p_text = render_prompt(tokenizer, rec.prompt)
    c_text = render_completion(tokenizer, rec.prompt, rec.completion, p_text)
    p_ids = tokenizer(p_text, add_special_tokens=False)["input_ids"]
    full = tokenizer(p_text + c_text, add_special_tokens=False)["input_ids"]
    if full[: len(p_ids)] == p_ids:
        return p_ids, full[len(p_ids):], True
    return p_ids, tokenizer(c_text, add_special_tokens=False)["input_ids"], False


def fit(p_ids: list[int], c_ids: list[int], max_length: int, truncation: str = "keep_start"
        ) -> tuple[list[int], list[int]] | None:
    """A record's ids and completion mask within `max_length` (see `tokenize_records`), or None when it is
    dropped."""
    ids = p_ids + c_ids
    mask = [0] * len(p_ids) + [1] * len(c_ids)
    if len(ids) <= max_length:
        return ids, mask
    if truncation == "drop" or len(p_ids) >= max_length:
        return None
    return ids[:max_length], mask[:max_length]


def tokenize_records(records: list[Record], tokenizer, max_length: int, truncation: str = "keep_start"
                     ) -> tuple[dict[str, list], TokenizeReport]:
    """Columns `input_ids`, `completion_mask`, `length`, `id` for trl, and the truncation report.

    `keep_start` keeps the first `max_length` tokens (the prompt first, then as much of the completion
    as fits); a record whose prompt alone fills `max_length` has nothing to learn and is dropped.
    `drop` drops every record longer than `max_length`. Both are counted in the report.
    """
    rep = TokenizeReport(records=len(records), max_length=max_length)
    cols: dict[str, list] = {"input_ids": [], "completion_mask": [], "length": [], "id": []}
    for rec in records:
        p_ids, c_ids, whole = encode_record(tokenizer, rec)
        if not whole:
            rep.boundary_retokenized += 1
        fitted = fit(p_ids, c_ids, max_length, truncation)
        if fitted is None:
            rep.dropped += 1
            rep.dropped_ids.append(rec.id)
            continue
        ids, mask = fitted
        if len(ids) < len(p_ids) + len(c_ids):
            rep.truncated += 1
            rep.truncated_ids.append(rec.id)
        cols["input_ids"].append(ids)
        cols["completion_mask"].append(mask)
        cols["length"].append(len(ids))
        cols["id"].append(rec.id)
        rep.kept += 1
        rep.tokens += len(ids)
        rep.completion_tokens += sum(mask)
    return cols, rep
