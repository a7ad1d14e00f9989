"""How `score` joins a predictions file to the gold records (`MATCH_RULE`): by id, or by position when no
prediction carries an id; what cannot be joined is counted, never matched to another record."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from peft_apps.core.data import Record, read_jsonl, require
from peft_apps.core.errors import UserError, warn


MATCH_RULE = ("Predictions join gold records by id when any prediction carries an \"id\" (every one must then): "
              "each id goes to the gold record with that id; a gold id that repeats takes its predictions in file "
              "order. When no prediction carries an id, the n-th prediction goes to the n-th gold record "
              "(--by position forces this). A prediction for a record the reader skipped (needs a picture, no "
              "options, ...) is left out and counted in one warning; ids that are not in the gold file are "
              "counted in another, and stop the run when none match.")


@dataclass
class Joined:
    """Predictions joined to gold records (see MATCH_RULE): gold position -> raw model text."""
    outputs: dict[int, str]
    rule: str  # "id" or "position"
    for_skipped: Counter = field(default_factory=Counter)  # reason the gold reader skipped the record -> count
    unknown: list[str] = field(default_factory=list)  # prediction ids in no gold record


def _few(items, k: int = 5) -> str:
    items = list(items)
    return ", ".join(repr(x) for x in items[:k]) + (f", ... ({len(items)} in all)" if len(items) > k else "")


def join_predictions(path: Path, golds: list[Record], gold_file: Path | str = "the gold file",
                     by: str = "auto") -> Joined:
    """Join a JSONL of {"id"?, "output"} to `golds` by one rule, MATCH_RULE: by id whenever the predictions
    carry ids (`by="id"` requires them), by position only when none does (or `by="position"`). Never a per-row
    fallback from one to the other."""
    path = Path(path)
    if by not in ("auto", "id", "position"):
        raise UserError(f"--by must be id, position or auto, got {by!r}")
    preds = [(lineno, obj) for lineno, obj in read_jsonl(path)]
    for lineno, obj in preds:
        require(obj, "output", f"{path}:{lineno}")
    with_id = [(n, o) for n, o in preds if o.get("id") is not None]
    gold_ids = [g.id for g in golds]
    if by == "auto":
        if with_id and len(with_id) < len(preds):
            n = next(n for n, o in preds if o.get("id") is None)
            raise UserError(f"{path}:{n}: no \"id\", though {len(with_id)} other prediction(s) have one: the "
                            f"ids cannot be joined to {gold_file}",
                            hint="give every prediction the gold record's id, or none (then the n-th prediction "
                                 "goes to the n-th gold record; --by position forces that)")
        by = "id" if with_id else "position"
    if by == "position":
        if len(preds) > len(golds):
            raise UserError(f"{path}: {len(preds)} predictions for {len(golds)} gold records in {gold_file} "
                            f"(joined by position, as no prediction has an id)",
                            hint="give each prediction the id of its gold record")
        return Joined({i: o["output"] for i, (_, o) in enumerate(preds)}, "position")
    # by id
    positions: dict[str, list[int]] = {}
    for i, g in enumerate(golds):
        positions.setdefault(g.id, []).append(i)
    repeated = {k: len(v) for k, v in positions.items() if len(v) > 1}
    if repeated:
        warn(f"{gold_file}: {len(repeated)} id(s) name more than one record ({_few(f'{k} x{v}' for k, v in repeated.items())}); "
             f"predictions with such an id match those records in file order")
    skipped = getattr(golds, "skipped", {}) or {}
    joined = Joined({}, "id")
    used: Counter = Counter()
    for lineno, obj in preds:
        where = f"{path}:{lineno}"
        rid = require(obj, "id", where, (str, int))
        key = str(rid)
        if key in positions:
            k = used[key]
            if k >= len(positions[key]):
                n = len(positions[key])
                raise UserError(f"{where}: a prediction too many for id {rid!r}: {gold_file} has "
                                f"{'one record' if n == 1 else f'{n} records'} with it")
            joined.outputs[positions[key][k]] = obj["output"]
            used[key] += 1
        elif key in skipped:
            joined.for_skipped[skipped[key]] += 1
        else:
            joined.unknown.append(key)
    if preds and not joined.outputs and not joined.for_skipped:
        raise UserError(f"{path}: no prediction id is a record id of {gold_file} (joined by id, as the "
                        f"predictions carry ids)",
                        hint=f"prediction ids: {_few(joined.unknown)}; gold ids: {_few(gold_ids)}. "
                             f"Predictions in gold order without ids (or --by position) join by position")
    if joined.for_skipped:
        warn(f"{path}: {sum(joined.for_skipped.values())} prediction(s) left out: their records were skipped "
             f"when {gold_file} was read (" + ", ".join(f"{n} {r}" for r, n in joined.for_skipped.items()) + ")")
    if joined.unknown:
        warn(f"{path}: {len(joined.unknown)} prediction id(s) not in {gold_file} left out: {_few(joined.unknown)}")
    return joined
