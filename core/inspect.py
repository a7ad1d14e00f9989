"""`peft-apps inspect`: the first training records exactly as the trainer will see them, after the chat
template, tokenization and truncation, with the tokens it trains on marked. Template mistakes (a doubled
BOS, a missing end-of-turn token, a newline trained after it) show here before any GPU hour is spent.

The same functions the trainer calls make the view: the app's `training_records` (the core's split),
`modeling.load_tokenizer`, and `data.encode_record` and `data.fit` as `data.tokenize_records` calls them
(template, whole-conversation tokenization, the prompt/completion boundary, `data.max_length` and
`data.truncation`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from peft_apps.core.data import Record, encode_record, fit

if TYPE_CHECKING:  # pragma: no cover
    from peft_apps.core.config import Recipe
    from peft_apps.core.registry import App


def inspect_records(app: App, recipe: Recipe, tokenizer, n: int = 3, split: str = "train") -> list[dict[str, Any]]:
    """One dict per record, the first `n` of `split`: {"id", "input_ids", "labels" (-100 where nothing is
    trained), "prompt", "completion" (the texts of those ids, special tokens shown), "truncated" (tokens cut),
    "dropped" (the record is longer than data.max_length and is not trained on at all)}. `tokenizer`:
    `modeling.load_tokenizer(recipe.model)`, as the trainer loads it."""
    records = app.training_records(recipe, split)[: max(0, n)]
    return [_view(rec, tokenizer, recipe) for rec in records]


def _view(rec: Record, tokenizer, recipe: Recipe) -> dict[str, Any]:
    p_ids, c_ids, _ = encode_record(tokenizer, rec)
    whole = len(p_ids) + len(c_ids)
    fitted = fit(p_ids, c_ids, recipe.data.max_length, recipe.data.truncation)
    if fitted is None:
        return {"id": rec.id, "input_ids": [], "labels": [], "prompt": "", "completion": "", "truncated": whole,
                "dropped": True, "tokens": whole}
    ids, mask = fitted
    n_prompt = mask.index(1) if 1 in mask else len(mask)
    return {"id": rec.id, "input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, mask)],
            "prompt": tokenizer.decode(ids[:n_prompt], skip_special_tokens=False),
            "completion": tokenizer.decode(ids[n_prompt:], skip_special_tokens=False),
            "truncated": whole - len(ids), "dropped": False, "tokens": whole}


def render(views: list[dict[str, Any]], recipe: Recipe, tok, console) -> None:
    """Rich text: per record its counts, the prompt dim and the trained tokens highlighted, each token's
    boundary shown by alternating shades; what truncation cut."""
    from rich.panel import Panel
    from rich.text import Text

    console.print(f"[bold]{recipe.app}[/] / {recipe.name}: {len(views)} training record(s) as the trainer sees "
                  f"them ({recipe.model.base}, data.max_length={recipe.data.max_length}, "
                  f"truncation={recipe.data.truncation}); [reverse green]trained tokens[/], prompt dim")
    for v in views:
        trained = sum(1 for x in v["labels"] if x != -100)
        head = (f"{v['id']}: {len(v['input_ids'])} tokens, {len(v['input_ids']) - trained} prompt + "
                f"{trained} trained")
        if v["dropped"]:
            head = f"{v['id']}: dropped, {v['tokens']} tokens > data.max_length={recipe.data.max_length}"
        elif v["truncated"]:
            head += f"; truncation cut {v['truncated']} token(s) of the completion"
        text = Text()
        pending: list[int] = []  # tokens holding part of one character (byte-level pieces) print together
        for k, (t, label) in enumerate(zip(v["input_ids"], v["labels"])):
            pending.append(t)
            piece = tok.decode(pending, skip_special_tokens=False)
            if piece.endswith("\ufffd") and len(pending) < 4:
                continue
            pending = []
            if label == -100:
                text.append(piece, style="dim" if k % 2 else "dim italic")
            else:
                text.append(piece, style="reverse green" if k % 2 else "reverse cyan")
        console.print(Panel(text, title=head, title_align="left"))
