"""ExamSolver: a base model with an exam adapter, answering questions with reasoning, and
self-consistency: k sampled answers per question, the majority of the readable answers kept.

    from peft_apps.apps.exam import ExamSolver
    solver = ExamSolver.from_pretrained(None, "runs/exam-qlora")
    for s in solver.solve("questions.jsonl", samples=8):
        print(s.id, s.answer, s.votes)

The k samples of a question are decoded as one batch over the question's prompt encoded once (the
core's prefix planner); each sample has its own seed (seed * 1000 + sample index, per question), so a
question's samples are the same whether drawn together or one call at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from peft_apps.core.config import Recipe, run_recipe
from peft_apps.core.data import Record, render_prompt
from peft_apps.core.engine import Engine, GenerationOptions, PrefixTree
from peft_apps.core.engine.remote import open_engine

from .parse import extract, vote


@dataclass
class Solution:
    id: str
    output: str  # the chosen text: the first sample whose answer won the vote
    answer: list[str] | None
    samples: list[str] = field(default_factory=list)
    votes: dict[str, int] = field(default_factory=dict)


class ExamSolver:
    def __init__(self, engine: Engine, recipe: Recipe):
        self.engine, self.recipe = engine, recipe

    @classmethod
    def from_pretrained(cls, base: str | None, adapter: str | Path, endpoint: str | None = None,
                        model: str | None = None, api_key_env: str | None = None) -> "ExamSolver":
        """`endpoint`: a server's URL to generate on instead of loading the model here (`model`: its name for
        the adapter, default the run folder's name; `api_key_env`: the variable holding the API key)."""
        recipe = run_recipe(adapter, "exam")  # (first: a folder that is no run's is named before loading)
        return cls(open_engine(base, adapter, endpoint, model, api_key_env), recipe)

    def _ids(self, r: Record) -> list[int]:
        return self.engine.tokenizer(render_prompt(self.engine.tokenizer, r.prompt), add_special_tokens=False)["input_ids"]

    def sample(self, records: Sequence[Record], k: int, seed: int = 0, together: bool = True) -> list[list[str]]:
        """k sampled answers per record. `together=False` draws each sample in its own call (the
        benchmark's baseline); the seeds make both ways give the same samples."""
        from peft_apps.core.loop import generation_options

        base = replace(generation_options(self.recipe), do_sample=True)
        ids = [self._ids(r) for r in records]
        tree = PrefixTree(self.engine)
        tree.roots({i: x[:-1] for i, x in enumerate(ids)})
        calls = [(((i,)), x) for i, x in enumerate(ids) for _ in range(k)]
        seeds = GenerationOptions.spread_seeds(seed, len(calls))
        if together:
            texts = tree.generate(calls, options=replace(base, row_seeds=seeds))
        else:
            texts = [tree.generate([c], options=replace(base, row_seeds=[s], batch_size=1))[0]
                     for c, s in zip(calls, seeds)]
        return [texts[i * k:(i + 1) * k] for i in range(len(ids))]

    def complete(self, records: Sequence[Record]) -> list[Any]:
        """One answer per record (greedy), or with `eval.samples` = k > 1 the vote of k samples, with the
        samples and vote counts as extra fields of the prediction row."""
        from peft_apps.core.loop import generation_options

        k = self.recipe.eval.samples
        if k <= 1:
            return self.engine.chat([r.prompt for r in records], options=generation_options(self.recipe))
        out = []
        for r, s in zip(records, self.solve_records(records, k)):
            out.append({"output": s.output, "samples": s.samples, "votes": s.votes})
        return out

    def solve_records(self, records: Sequence[Record], k: int = 1, seed: int = 0) -> list[Solution]:
        """Each record's answer: greedy (k = 1, the recipe's generation settings), or the vote of k samples."""
        if k <= 1:
            from peft_apps.core.loop import generation_options

            texts = self.engine.chat([r.prompt for r in records], options=generation_options(self.recipe))
            return [Solution(r.id, t, extract(t, r.meta["kind"], r.meta["letters"], r.meta["n_rows"]), [t])
                    for r, t in zip(records, texts)]
        out = []
        for r, texts in zip(records, self.sample(records, k, seed)):
            answers = [extract(t, r.meta["kind"], r.meta["letters"], r.meta["n_rows"]) for t in texts]
            best, counts = vote(answers)
            chosen = next((t for t, a in zip(texts, answers) if best is not None and a == best), texts[0])
            out.append(Solution(r.id, chosen, best, texts, {",".join(a): n for a, n in counts.items()}))
        return out

    def solve(self, questions: str | Path, samples: int = 1, seed: int = 0) -> list[Solution]:
        """Answer every question of a ZNO-Eval / UNLP file (greedy, or the vote of `samples` samples)."""
        from peft_apps.core.registry import get_app

        app = get_app("exam")
        records = app.read(Path(questions), self.recipe, labelled=False)
        return self.solve_records(records, samples, seed)
