"""The exam app's declarations: ZNO-Eval / UNLP questions in (`data.py`), Ukrainian and English prompts
(prompts/exam/), targets (letters, CoT, CoT led by its topic line), answer extraction (`parse.py`) and
exam scoring (`metrics/exam.py`); self-consistency over k sampled answers (`pipeline.py`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from peft_apps.core.config import Recipe
from peft_apps.core.data import Record, Records
from peft_apps.core.errors import UserError, warn
from peft_apps.core.prompts import render
from peft_apps.core.registry import App

from .data import Question, answer_text, load, read_rationales
from .parse import extract

TARGETS = ("letters", "cot", "cot_topic")


class ExamTask(BaseModel):
    """The recipe's `task:` section."""
    model_config = ConfigDict(extra="forbid")
    target: Literal["letters", "cot", "cot_topic"] = "letters"
    language: Literal["uk", "en"] = "uk"
    rationales: str | None = Field(None, description="JSONL of {id, rationale}: CoT text where `comment` has none")
    include_photo: bool = Field(False, description="keep questions that need a picture (the text alone)")


def _prefix(language: str) -> str:
    return "Відповідь:" if language == "uk" else "Answer:"


class AnswerRequest(BaseModel):
    """`POST /v1/apps/exam/answer`: one question in, the answer out (with the samples and votes when
    `samples` > 1). The options come with `options` or in the text, one per line as "А) ..." (as `predict`
    reads a question typed as text); `rows` makes it a matching question."""
    model_config = ConfigDict(extra="forbid")
    question: str
    options: list[tuple[str, str]] | None = None  # [(letter, text), ...]
    rows: list[tuple[str, str]] | None = None  # matching questions: [(number, text), ...]
    samples: int = Field(default=1, ge=1, le=64)
    seed: int = 0
    model: str | None = None  # the served exam run; default: the only one


@dataclass
class ExamApp(App):
    def question_record(self, q: Question, recipe: Recipe, target_text: str = "") -> Record:
        task: ExamTask = self.task(recipe)
        fields = {"question": q.question, "options": q.options, "rows": q.rows, "kind": q.kind,
                  "layout": q.layout, "letters": q.letters, "target": task.target}
        prompt = render(self.name, task.language, where=f"question {q.id} (exam {q.exam}, task {q.task_id})", **fields)
        return Record.simple(q.id, prompt, target_text, system=recipe.data.system_prompt, kind=q.kind,
                             letters=q.letters, n_rows=len(q.rows), correct=",".join(q.correct), subject=q.subject,
                             exam=q.exam, task_id=q.task_id)

    def target(self, q: Question, task: ExamTask, rationales: dict[str, str]) -> tuple[str, bool]:
        """The text the model trains on, and whether a CoT target had to fall back to the answer alone."""
        answer = answer_text(q).replace("Відповідь:", _prefix(task.language), 1)
        if task.target == "letters":
            return answer, False
        solution = rationales.get(q.id) or q.solution
        topic = f"ТЕМА: {q.topic}\n" if task.target == "cot_topic" and q.topic else ""
        return (f"{topic}{solution}\n{answer}", False) if solution else (topic + answer, True)

    def read(self, path: Path, recipe: Recipe, labelled: bool = True, prompts: bool = True) -> Records:
        task: ExamTask = self.task(recipe)
        loaded = load(Path(path), task.include_photo)
        rationales = read_rationales(Path(task.rationales)) if task.rationales and labelled else {}
        out = Records(skipped=loaded.skipped_ids)
        for q in loaded.questions:
            text, answer_only = self.target(q, task, rationales) if labelled else ("", False)
            r = self.question_record(q, recipe, text)
            if answer_only:
                r.meta["source"], r.meta["answer_only"] = str(path), True
            out.append(r)
        return out

    def train_records(self, examples: list[Record], recipe: Recipe) -> list[Record]:
        """The examples as they are; those a CoT target could give no rationale are counted in a warning
        (here, not in `read`: scoring and evaluation do not use the target text)."""
        task: ExamTask = self.task(recipe)
        short = Counter(ex.meta["source"] for ex in examples if ex.meta.get("answer_only"))
        for source, n in short.items():
            warn(f"{source}: {n} of {len(examples)} question(s) with no rationale: answer-only target "
                 f"(--target {task.target} needs a worked solution in `comment` or task.rationales)")
        return examples

    def pipeline(self, engine, recipe: Recipe):
        from .pipeline import ExamSolver

        return ExamSolver(engine, recipe)

    def serve_request(self):
        return AnswerRequest

    def serve(self, engine, runs: dict[str, Path], request: AnswerRequest) -> dict[str, Any]:
        """The answer to one question: greedy, or the vote of `samples` samples."""
        from dataclasses import asdict

        from peft_apps.core.config import load_recipe

        from .parse import normalize_letter
        from .pipeline import ExamSolver

        name = self.served_run(runs, request.model)
        recipe = load_recipe(runs[name] / "recipe.yaml")
        if request.options is None:
            if request.rows:
                raise UserError("a matching question (rows) needs its options in \"options\"")
            record = self.from_text(request.question, "request", recipe)
        else:
            options = [(normalize_letter(k), v) for k, v in request.options]
            rows = [(str(k), v) for k, v in request.rows or []]
            q = Question("request", "request", "request", "request", "matching" if rows else "single",
                         request.question, options, rows, [], layout="rows" if rows else "")
            record = self.question_record(q, recipe)
        solution = ExamSolver(engine([name]), recipe).solve_records([record], request.samples, request.seed)[0]
        return {k: v for k, v in asdict(solution).items() if k != "id"}

    def generate(self, pipeline, examples: list[Record], recipe: Recipe) -> list[Any]:
        return pipeline.complete(examples)

    def parse(self, output: str, example: Record, task: Any, stats: Counter) -> str:
        got = extract(output, example.meta.get("kind", "single"), example.meta.get("letters", []),
                      example.meta.get("n_rows", 0))
        if got is None:
            stats["answer not readable (scores 0)"] += 1
            return ""
        if "" in got:
            stats["matching answer with rows left out (they score 0)"] += 1
        return ",".join(got)

    def metrics(self, examples: list[Record], parsed: list[Any], task: Any) -> dict[str, Any]:
        return self.load_metric().compute(predictions=list(parsed), references=[ex.meta["correct"] for ex in examples],
                                          kinds=[ex.meta["kind"] for ex in examples],
                                          subjects=[ex.meta["subject"] for ex in examples],
                                          exams=[ex.meta["exam"] for ex in examples])

    def inputs(self, items: list[str], recipe: Recipe) -> list[Record]:
        """`predict` takes question files (ZNO-Eval .json, UNLP .jsonl) or a question typed as text, its
        options one per line as "А) ..." / "А. ...", or on the question's line as "... А) one Б) two"."""
        out: list[Record] = []
        for item in items:
            p = Path(item)
            if p.is_dir():
                raise UserError(f"input {p} is a folder; expected a question file (ZNO-Eval .json, UNLP .jsonl) "
                                f"or a question as text")
            if p.is_file():
                out.extend(self.read(p, recipe, labelled=False))
            elif p.suffix in (".json", ".jsonl") and " " not in item:
                raise UserError(f"input not found: {p}", hint="pass a question file, or the question as text")
            else:
                out.append(self.from_text(item, str(len(out)), recipe))
        return out

    def from_text(self, text: str, id: str, recipe: Recipe) -> Record:
        import re

        from .parse import normalize_letter

        if "\n" not in text.strip():  # one line: "Question? А) one Б) two В) three"
            text = re.sub(r"\s+(?=[A-ZА-ЯҐЄІЇ]\)\s)", "\n", text)
        lines = [ln.strip() for ln in text.strip().split("\n") if ln.strip()]
        opt = re.compile(r"^([A-Za-zА-ЯҐЄІЇ])\s*[).:]\s*(.+)$")
        options = [(normalize_letter(m.group(1)), m.group(2)) for ln in lines if (m := opt.match(ln))]
        question = "\n".join(ln for ln in lines if not opt.match(ln))
        if not options:
            raise UserError(f"input {id}: no options found", hint='write each option on its own line: "А) ..."')
        q = Question(id, "input", id, "input", "single", question, options, [], [])
        return self.question_record(q, recipe)

    def convert(self, source: Path, out: Path, **options: Any) -> dict[str, Any]:
        """Questions -> the chat records training sees (JSONL), with counts by kind and what was skipped."""
        import json

        from peft_apps.core.config import load_recipe
        from peft_apps.core.data import write_jsonl
        from peft_apps.core.io import atomic_write

        recipe = load_recipe(self.recipe_path(None), app=self.name)
        task = self.task(recipe)
        loaded = load(Path(source), task.include_photo)
        records = self.train_records(self.read(Path(source), recipe), recipe)
        out = Path(out)
        target = out / "records.jsonl"
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl(target, [{"id": r.id, "messages": r.prompt, "completion": r.completion, "kind": r.meta["kind"],
                              "subject": r.meta["subject"], "exam": r.meta["exam"]} for r in records])
        report = {"source": str(source), "output": str(target), "tasks": loaded.tasks,
                  "kept": len(loaded.questions), "skipped_total": sum(loaded.skipped.values()),
                  "questions": dict(Counter(q.kind for q in loaded.questions)),
                  "matching_layouts": dict(Counter(q.layout for q in loaded.questions if q.kind == "matching")),
                  "target": task.target,
                  "answer_only_targets": sum(1 for r in records if r.meta.get("answer_only")),
                  "skipped": dict(loaded.skipped), "skipped_examples": loaded.examples}
        atomic_write(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False))
        return report

    def demo_inputs(self, recipe: Recipe, work_dir: Path) -> list[str]:
        return [str(self.data / "unlp-sample.jsonl")]
