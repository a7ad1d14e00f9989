"""The loop every app shares: split and limit its examples, generate in batches, parse, score, write.

An app declares how to read its data, parse model text and compute metrics (`core/registry.py`); this
module runs the rest the same way for all of them, so `eval`, `predict`, `score` and the task metrics
logged while training agree by construction:

    examples(app, recipe, split)        the app's examples of `split`, split and limited by the core
    predict_examples(app, pipe, exs)    generation + parsing -> rows {"id", "output", "parsed", ...}
    evaluate(app, adapter, recipe)      the above on the eval split, metrics, eval_predictions.jsonl
    predict(app, adapter, inputs)       the above on a user's inputs
    score_files(app, gold, pred)        metrics from a predictions file: parsing model text included

One split rule for every app: with no `data.eval` file, the `data.eval_fraction` of examples with the
lowest hash of (seed, id) is held out. It depends on the ids only, not on file order, and holds out
exactly round(n * fraction) examples (at least one when the fraction is above zero).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from peft_apps.core.data import Record, write_jsonl
from peft_apps.core.errors import UserError
from peft_apps.core.matching import join_predictions
from peft_apps.core.resources import bundled_or_path

if TYPE_CHECKING:  # pragma: no cover
    from peft_apps.core.config import Recipe

# a registered `registry.App`: the registry sits above this module (it calls the loop), so the type is named
# loosely
App = Any

PREDICTIONS = "eval_predictions.jsonl"


# ---- examples ---------------------------------------------------------------------------------------


def _hash(seed: int, rid: str) -> str:
    return hashlib.sha256(f"{seed}:{rid}".encode()).hexdigest()


def held_out(ids: list[str], fraction: float, seed: int) -> set[str]:
    """The ids the eval split takes from a single data file (see the module docstring)."""
    unique = list(dict.fromkeys(ids))
    if fraction <= 0 or len(unique) < 2:
        return set()
    k = min(len(unique) - 1, max(1, round(len(unique) * fraction)))
    return set(sorted(unique, key=lambda i: _hash(seed, i))[:k])


def examples(app: App, recipe: Recipe, split: str) -> list[Record]:
    """The app's examples of `split` ('train' or 'eval'): the `data.eval` file, or the held-out part of
    `data.train`; then `data.limit_train` / `data.limit_eval`."""
    if split not in ("train", "eval"):
        raise UserError(f"split must be train or eval, got {split!r}")
    if not recipe.data.eval:
        return splits(app, recipe)[split]
    if split == "train":
        _require_train(app, recipe)
    return _limited(app.read(_data_file(recipe, split), recipe), recipe, split)


def splits(app: App, recipe: Recipe) -> dict[str, list[Record]]:
    """Both splits, each data file read once (training and the demo need both)."""
    if recipe.data.eval:
        return {split: examples(app, recipe, split) for split in ("train", "eval")}
    _require_train(app, recipe)
    rows = app.read(_data_file(recipe, "train"), recipe)
    out = held_out([r.id for r in rows], recipe.data.eval_fraction, recipe.train.seed)
    return {"train": _limited([r for r in rows if r.id not in out], recipe, "train"),
            "eval": _limited([r for r in rows if r.id in out], recipe, "eval")}


def _require_train(app: App, recipe: Recipe) -> None:
    if not recipe.data.train:
        demo = f"; `peft-apps demo {app.name}` runs on a bundled sample" if "demo" in app.recipes() else ""
        raise UserError("no training data: set data.train=FILE (in the app's data format)",
                        hint=f"recipe {recipe.name!r} of app {app.name!r} names none{demo}")


def _limited(rows: list[Record], recipe: Recipe, split: str) -> list[Record]:
    limit = recipe.data.limit_eval if split == "eval" else recipe.data.limit_train
    return rows[:limit] if limit else rows


# ---- generation and parsing -------------------------------------------------------------------------


def _data_file(recipe: Recipe, key: str) -> Path:
    """The file `data.<key>` names; a missing one is an error that says where the name came from."""
    spec = getattr(recipe.data, key)
    path = bundled_or_path(spec)
    if not path.is_file():
        what = "a folder, not a file" if path.is_dir() else "file not found"
        source = "you set it on the command line" if recipe.set_by_user(f"data.{key}") else \
            f"recipe {recipe.name!r} sets data.{key}={spec}"
        raise UserError(f"data.{key}: {what}: {path}",
                        hint=f"{source}; pass data.{key}=PATH (a file in the app's data format)"
                             + (" (or data.eval=null to hold out data.eval_fraction of the training file)"
                                if key == "eval" else ""))
    return path


def generation_options(recipe: Recipe, task: Any = None):
    """The engine's options from the recipe's `eval:` section (and the task's `stop` strings, if any)."""
    from peft_apps.core.engine import GenerationOptions

    e = recipe.eval
    return GenerationOptions(max_new_tokens=e.max_new_tokens, do_sample=e.do_sample, temperature=e.temperature,
                             top_p=e.top_p, batch_size=e.batch_size, stop=list(getattr(task, "stop", None) or []))


def predict_examples(app: App, pipeline: Any, exs: list[Record], recipe: Recipe) -> tuple[list[dict], Counter]:
    """Generate for every example (the app's `generate`, batched), parse each output: the prediction rows
    {"id", "output", "parsed", ...fields the app adds} and the parser's counts of what it dropped."""
    task = app.task(recipe)
    outputs = app.generate(pipeline, exs, recipe) if exs else []
    if len(outputs) != len(exs):
        raise RuntimeError(f"app {app.name!r}: generate() returned {len(outputs)} outputs for {len(exs)} examples")
    rows, stats = [], Counter()
    for ex, out in zip(exs, outputs):
        extra = dict(out) if isinstance(out, dict) else {"output": out}
        text = extra.pop("output")
        parsed = app.parse(text, ex, task, stats)
        rows.append({"id": ex.id, "output": text, "parsed": parsed, **extra})
    return rows, stats


def _scored(app: App, exs: list[Record], rows: list[dict], recipe: Recipe, stats: Counter) -> dict[str, Any]:
    """The app's metrics, the example count, the parser's counts (`parse_counts`) and the generation
    counts an app's `generate` reported per row (`generation_counts`)."""
    metrics = dict(app.metrics(exs, [r["parsed"] for r in rows], app.task(recipe)))
    return {**metrics, **_counts(rows, stats)}


def _counts(rows: list[dict], stats: Counter) -> dict[str, Any]:
    """The row count, the parser's counts (`parse_counts`) and the generation counts an app's `generate`
    reported per row (`generation_counts`)."""
    out: dict[str, Any] = {"n": len(rows)}
    if stats:
        out["parse_counts"] = dict(sorted(stats.items()))
    generation = sum((Counter(r["stats"]) for r in rows if isinstance(r.get("stats"), dict)), Counter())
    if generation:
        out["generation_counts"] = dict(sorted(generation.items()))
    return out


def load_pipeline(app: App, adapter: str, recipe: Recipe | None, model: str | None = None,
                  endpoint: Any = None) -> Any:
    """The app's pipeline over the adapter: loaded here, or with `endpoint` (core.engine.remote.Endpoint)
    generating on that server."""
    from peft_apps.core.engine.remote import open_engine

    return app.pipeline(open_engine(model, adapter, endpoint), recipe)


def evaluate(app: App, adapter: str, recipe: Recipe, split: str = "eval", out_dir: Path | None = None,
             model: str | None = None, endpoint: Any = None) -> dict[str, Any]:
    """Metrics of an adapter on `split` (limited by `eval.limit`); the predictions go to
    `out_dir/eval_predictions.jsonl`, which `score` reads back to the same metrics."""
    exs = examples(app, recipe, split)
    if recipe.eval.limit:
        exs = exs[: recipe.eval.limit]
    if not exs:
        raise UserError(f"no {split} examples to evaluate on",
                        hint="set data.eval=FILE or data.eval_fraction above 0")
    pipeline = load_pipeline(app, adapter, recipe, model, endpoint)
    rows, stats = predict_examples(app, pipeline, exs, recipe)
    if out_dir is not None:
        write_jsonl(Path(out_dir) / PREDICTIONS, rows)
    metrics = _scored(app, exs, rows, recipe, stats)
    metrics["split"] = split
    metrics.update(_cache_report(pipeline))
    _add_warnings(metrics)
    return metrics


def _cache_report(pipeline: Any) -> dict[str, Any]:
    """{"prefix_cache": hits, misses, evictions and tokens saved} of the pipeline's in-process engine."""
    engine = pipeline if hasattr(pipeline, "prefix_cache") else getattr(pipeline, "engine", None)
    cache = getattr(engine, "prefix_cache", None)
    return {"prefix_cache": cache.report()} if cache is not None and cache.enabled else {}


def predict(app: App, adapter: str, inputs: list[str], recipe: Recipe, model: str | None = None,
            endpoint: Any = None, report: dict[str, Any] | None = None) -> list[dict]:
    """Prediction rows for a user's inputs (files in the app's format, or texts). `report`, when given, is
    filled with the run's counts: rows, the parser's drops, the generation counts the app reported and
    the prefix cache's."""
    exs = app.inputs(inputs, recipe)
    pipeline = load_pipeline(app, adapter, recipe, model, endpoint)
    rows, stats = predict_examples(app, pipeline, exs, recipe)
    if report is not None:
        report.update(_counts(rows, stats), **_cache_report(pipeline))
    return rows


def base_model_metrics(app: App, recipe: Recipe, exs: list[Record]) -> dict[str, Any]:
    """The metrics of the recipe's base model, no adapter: where training starts from."""
    from peft_apps.core.engine import Engine

    rows, stats = predict_examples(app, app.pipeline(Engine.from_pretrained(recipe.model), recipe), exs, recipe)
    return _scored(app, exs, rows, recipe, stats)


def majority_metrics(app: App, recipe: Recipe, train: list[Record], exs: list[Record]) -> dict[str, Any] | None:
    """The metrics of always answering the most common training answer (None when no answer repeats:
    then there is no majority to speak of)."""
    answers = Counter(r.completion for r in train)
    if not answers or answers.most_common(1)[0][1] < 2:
        return None
    answer = answers.most_common(1)[0][0]
    rows = [{"id": ex.id, "output": answer, "parsed": app.parse(answer, ex, app.task(recipe), Counter())}
            for ex in exs]
    return _scored(app, exs, rows, recipe, Counter())


def task_evaluator(app: App, recipe: Recipe, exs: list[Record]) -> Callable[[Any, Any], dict[str, Any]]:
    """What the trainer calls every `train.eval_steps`: the app's own predictions and metrics on `exs`,
    from the model being trained (borrowed by an engine for the call)."""
    def run(model, tokenizer) -> dict[str, Any]:
        from peft_apps.core.engine import Engine

        with Engine.borrow(model, tokenizer) as engine:
            rows, stats = predict_examples(app, app.pipeline(engine, recipe), exs, recipe)
        return _scored(app, exs, rows, recipe, stats)

    return run


# ---- scoring from files ---------------------------------------------------------------------------


def score_files(app: App, gold: Path, pred: Path, recipe: Recipe, only_predicted: bool = False,
                by: str = "auto") -> dict[str, Any]:
    """Metrics from raw model text against a gold file, without a model: each output is parsed as `eval`
    parses it. A gold example without a prediction counts as an empty output (`missing_predictions`), or,
    with `only_predicted`, is left out (a run over part of the file, e.g. `eval.limit`)."""
    golds = app.read(Path(gold), recipe, labelled=True, prompts=False)
    if not golds:
        raise UserError(f"{gold}: no gold examples")
    joined = join_predictions(Path(pred), golds, gold, by)
    outputs = joined.outputs
    task = app.task(recipe)
    stats: Counter = Counter()
    keep = [i for i in range(len(golds)) if not only_predicted or i in outputs]
    rows = [{"id": golds[i].id, "output": outputs.get(i, ""),
             "parsed": app.parse(outputs.get(i, ""), golds[i], task, stats)} for i in keep]
    metrics = _scored(app, [golds[i] for i in keep], rows, recipe, stats)
    metrics["missing_predictions"] = len(keep) - sum(i in outputs for i in keep)
    metrics["matched_by"] = joined.rule
    if joined.for_skipped:
        metrics["predictions_for_skipped_records"] = dict(joined.for_skipped)
    if joined.unknown:
        metrics["unmatched_predictions"] = len(joined.unknown)
    _add_warnings(metrics)
    return metrics


def _add_warnings(metrics: dict[str, Any]) -> None:
    """The warnings given on the way (an adapter of another app, skipped inputs, ...), counted and listed."""
    from peft_apps.core.errors import issued_warnings

    given = issued_warnings()
    if given:
        metrics["warnings"] = len(given)
        metrics["warning_messages"] = given[:20]


def scalar_metrics(metrics: dict[str, Any], headline: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """The number-valued metrics, the app's headline ones first (for printed tables and reports)."""
    nums = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    first = [kv for h in headline for kv in nums if kv[0] == h]
    return first + [kv for kv in nums if kv[0] not in headline]


def dumps_row(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False)
