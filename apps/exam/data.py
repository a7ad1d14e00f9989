"""Exam questions from ZNO-Eval JSON and UNLP 2024 JSONL, checked, with their training targets.

ZNO-Eval (NLPForUA/ZNO `*_raw.json`): a list of exams (or one exam), each with `tasks`: `question`,
`answers` [{answer, text}] (for a matching question the numbered rows "1".."4" come first, then the
lettered options), `answer_vheader` (option letters), `answer_hheader` (row numbers; non-empty only for
matching questions), `correct_answer` (one letter, or one per row), `comment` (a topic line "ТЕМА: ..."
and/or a worked solution), `with_photo`. Real files hold nulls and empty lists.

UNLP 2024 (unlp-2024-shared-task, osyvokon/zno): one JSON object a line: `question`, `answers` or
`choices` [{marker, text}], `correct_answers` (one marker), `subject` (or `source`).

Ids are the question's 0-based position in the file: UNLP lines in order, ZNO-Eval tasks of all exams
in file order, skipped questions included (so `score --pred` ids match whatever produced them).
Skipped and counted, each named by exam and task id: questions that need a picture (`with_photo`,
unless task.include_photo), questions with no options (open answers), duplicated option markers, and
a correct answer that is not among the options.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft_apps.core.errors import UserError, warn

from .parse import normalize_letter

TOPIC = re.compile(r"^\s*(ТЕМА|Тема)\s*[:.]\s*(.+)$", re.M)


@dataclass
class Question:
    id: str
    exam: str
    task_id: str
    subject: str
    kind: str  # "single" | "matching"
    question: str
    options: list[tuple[str, str]]  # (letter, text)
    rows: list[tuple[str, str]] = field(default_factory=list)  # matching: (number, text)
    correct: list[str] = field(default_factory=list)  # one letter, or one per row
    topic: str = ""
    solution: str = ""

    @property
    def letters(self) -> list[str]:
        return [m for m, _ in self.options]

    @property
    def max_points(self) -> int:
        return 1 if self.kind == "single" else len(self.rows)


@dataclass
class Loaded:
    questions: list[Question]
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> a few "exam X task Y"

    def add(self, q: Question, where: str) -> None:
        """Keep `q`, or skip it (counted, with `where` as an example) when `check` finds it unusable."""
        problem = check(q)
        if problem:
            self.skip(problem, where)
        else:
            self.questions.append(q)

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(where)


def _split_comment(comment: str | None) -> tuple[str, str]:
    """(topic, solution) from a ZNO-Eval comment."""
    text = (comment or "").strip()
    m = TOPIC.search(text)
    topic = m.group(2).strip() if m else ""
    solution = TOPIC.sub("", text).strip() if m else text
    if re.fullmatch(r"Завдання № ?\d+ тесту\.?", solution):
        solution = ""  # a placeholder, not a solution
    return topic, solution


def _subject(exam: dict[str, Any], path: Path) -> str:
    m = re.search(r"zno\.osvita\.ua/([a-z-]+)/", str(exam.get("link") or ""))
    return m.group(1) if m else path.stem.removesuffix("_raw")


def read_zno(path: Path, data: Any, include_photo: bool) -> Loaded:
    exams = data if isinstance(data, list) else [data]
    out = Loaded([])
    pos = 0
    for e_i, exam in enumerate(exams):
        if not isinstance(exam, dict) or not isinstance(exam.get("tasks"), list):
            raise UserError(f"{path}: exam {e_i} has no 'tasks' list", hint="a ZNO-Eval file: [{\"tasks\": [...]}]")
        exam_id = str(exam.get("test_id") or exam.get("link") or e_i)
        subject = _subject(exam, path)
        for t_i, t in enumerate(exam["tasks"]):
            qid, pos = str(pos), pos + 1
            task_id = str(t.get("task_id", t_i)) if isinstance(t, dict) else str(t_i)
            where = f"{path.name}: exam {exam_id}, task {task_id}"
            if not isinstance(t, dict) or not isinstance(t.get("question"), str) or not t["question"].strip():
                out.skip("no question text", where)
                continue
            if t.get("with_photo") and not include_photo:
                out.skip("needs a picture", where)
                continue
            answers = [a for a in (t.get("answers") or []) if isinstance(a, dict)]
            rows_h = [str(x) for x in (t.get("answer_hheader") or [])]
            rows = [(str(a.get("answer")), str(a.get("text") or "")) for a in answers if str(a.get("answer")) in rows_h]
            options = [(normalize_letter(str(a.get("answer") or "")), str(a.get("text") or "")) for a in answers
                       if str(a.get("answer")) not in rows_h]
            correct = [normalize_letter(str(c)) for c in (t.get("correct_answer") or [])]
            q = Question(qid, exam_id, task_id, subject, "matching" if rows_h else "single", t["question"].strip(),
                         options, rows, correct, *_split_comment(t.get("comment")))
            out.add(q, where)
    return out


def read_unlp(path: Path, include_photo: bool) -> Loaded:
    from peft_apps.core.data import read_jsonl

    out = Loaded([])
    for pos, (n, row) in enumerate(read_jsonl(path)):
        where = f"{path.name}, line {n}"
        choices = row.get("answers") if isinstance(row.get("answers"), list) else row.get("choices")
        if not isinstance(row.get("question"), str) or not row["question"].strip():
            out.skip("no question text", where)
            continue
        options = [(normalize_letter(str(c.get("marker") or "")), str(c.get("text") or ""))
                   for c in (choices or []) if isinstance(c, dict)]
        correct = [normalize_letter(str(c)) for c in (row.get("correct_answers") or [])]
        subject = str(row.get("subject") or re.sub(r"^zno-\d+-|-(main|trial|additional)\w*$", "",
                                                    str(row.get("source") or "")) or "unknown")
        q = Question(str(pos), str(row.get("source") or "unlp"), str(row.get("id", pos)), subject, "single",
                     row["question"].strip(), options, [], correct)
        out.add(q, where)
    return out


def check(q: Question) -> str | None:
    """Why a question cannot be used, or None."""
    if not q.options:
        return "no options (open answer)"
    letters = q.letters
    if any(not m for m in letters):
        return "an option without a marker"
    if len(set(letters)) != len(letters):
        return "duplicated option markers"
    if not q.correct:
        return "no correct answer"
    if any(c not in letters for c in q.correct):
        return "correct answer not among the options"
    if q.kind == "single" and len(q.correct) != 1:
        return "several correct answers for a single-choice question"
    if q.kind == "matching" and len(q.correct) != len(q.rows):
        return "correct answers do not match the rows"
    return None


def load(path: Path, include_photo: bool = False, report: bool = True) -> Loaded:
    from peft_apps.core.io import read_user_text

    path = Path(path)
    text, _ = read_user_text(path)
    stripped = text.lstrip()
    if stripped.startswith("[") or (stripped.startswith("{") and '"tasks"' in stripped[:200000]
                                    and "\n{" not in stripped):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
        loaded = read_zno(path, data, include_photo)
    else:
        loaded = read_unlp(path, include_photo)
    if report and loaded.skipped:
        parts = [f"{n} {reason} (e.g. {'; '.join(loaded.examples[reason])})" for reason, n in loaded.skipped.items()]
        warn(f"{path}: {sum(loaded.skipped.values())} question(s) skipped: " + ", ".join(parts))
    if not loaded.questions:
        raise UserError(f"{path}: no usable questions", hint="a ZNO-Eval .json file or a UNLP .jsonl file")
    return loaded


def answer_text(q: Question, letters: list[str] | None = None) -> str:
    """The answer line: "Відповідь: Б", or for matching "Відповідь: 1-Б, 2-Д, 3-А"."""
    letters = letters if letters is not None else q.correct
    if q.kind == "single":
        return f"Відповідь: {letters[0]}"
    return "Відповідь: " + ", ".join(f"{r}-{c}" for (r, _), c in zip(q.rows, letters))


def read_rationales(path: Path) -> dict[str, str]:
    """A rationale file: JSONL of {"id", "rationale"} (e.g. written by a teacher model)."""
    from peft_apps.core.data import read_jsonl

    out = {}
    for n, row in read_jsonl(path):
        if "id" not in row or not isinstance(row.get("rationale"), str):
            raise UserError(f"{path}, line {n}: needs 'id' and a 'rationale' string")
        out[str(row["id"])] = row["rationale"].strip()
    return out
