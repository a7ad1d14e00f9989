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
Also read: NLPForUA/ZNO's tuning files, `{"test": [task, ...]}` (tasks grouped by split, each naming its
exam in `test_id`).

Matching questions come in three real layouts, all kept and scored row by row: rows listed among
`answers` with their texts; rows numbered in the question text (e.g. "which part of speech (А–Д) is each
marked word (1–4)": `answers` holds only А–Д, the rows are "(1)word" markers); and ordering tasks
("Розташуйте послідовно ...": rows 1–4 are the places, the letters the items to put in order).

Skipped and counted, each named by exam and task id with what was seen: questions that need a picture
(`with_photo`, unless task.include_photo), questions with no options (open answers), duplicated option
markers, no correct answer, and a correct answer that is not among the options.
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
    kind: str  # "single" | "matching" (ordering tasks are matching questions: rows are the places 1..n)
    question: str
    options: list[tuple[str, str]]  # (letter, text)
    rows: list[tuple[str, str]] = field(default_factory=list)  # matching: (number, text); text may be ""
    correct: list[str] = field(default_factory=list)  # one letter, or one per row
    topic: str = ""
    solution: str = ""
    layout: str = ""  # matching: "rows" (rows listed with the options), "in_question" (numbered in the
    #                   question text, e.g. marked words), "ordering" (put the lettered items in order)

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
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> a few "exam X task Y: what was seen"
    skipped_ids: dict[str, str] = field(default_factory=dict)  # id of a skipped question -> reason
    tasks: int = 0  # every entry of the file, kept or skipped

    def add(self, q: Question, where: str) -> None:
        """Keep `q`, or skip it (counted, with `where` and what was seen as an example) when `check` finds
        it unusable."""
        problem = check(q)
        if problem:
            self.skip(problem[0], f"{where}: {problem[1]}", q.id)
        else:
            self.questions.append(q)

    def skip(self, reason: str, where: str, qid: str) -> None:
        self.skipped[reason] += 1
        self.skipped_ids[qid] = reason
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


def _exams(path: Path, data: Any) -> list[tuple[str, dict[str, Any]]]:
    """(exam id, exam) pairs from the ZNO-Eval layouts: a list of exams `[{"tasks": [...]}, ...]`, one exam
    `{"tasks": [...]}`, or tasks grouped by split `{"test": [task, ...], ...}` (the tuning files of
    NLPForUA/ZNO; each task names its exam in `test_id`)."""
    if isinstance(data, dict) and "tasks" not in data and data and all(isinstance(v, list) for v in data.values()):
        out: list[tuple[str, dict[str, Any]]] = []
        for split, tasks in data.items():
            by_exam: dict[str, list] = {}
            for t in tasks:
                by_exam.setdefault(str(t.get("test_id", split)) if isinstance(t, dict) else split, []).append(t)
            out.extend((exam_id, {"tasks": ts, "test_id": exam_id}) for exam_id, ts in by_exam.items())
        return out
    exams = data if isinstance(data, list) else [data]
    for e_i, exam in enumerate(exams):
        if not isinstance(exam, dict) or not isinstance(exam.get("tasks"), list):
            raise UserError(f"{path}: exam {e_i} has no 'tasks' list", hint="a ZNO-Eval file: [{\"tasks\": [...]}]")
    return [(str(exam.get("test_id") or exam.get("link") or e_i), exam) for e_i, exam in enumerate(exams)]


def _rows_in_question(question: str, numbers: list[str]) -> list[tuple[str, str]]:
    """Rows numbered inside the question text ("(1)відомий ... (2)більше"): each number with the word after
    its marker ("" where the question has no such marker)."""
    out = []
    for n in numbers:
        m = re.search(rf"\(\s*{re.escape(n)}\s*\)\s*([^\s,.;:!?()]+)", question)
        out.append((n, m.group(1) if m else ""))
    return out


def zno_question(t: dict[str, Any], qid: str, exam_id: str, task_id: str, subject: str) -> Question:
    """One ZNO-Eval task as a Question (unchecked). A matching task's rows are its `answer_hheader` numbers:
    listed among `answers` with their texts; else numbered in the question text ("(1)word"); else the places
    of an ordering task ("Розташуйте послідовно ...": rows 1..n, the lettered items to put in order)."""
    answers = [a for a in (t.get("answers") or []) if isinstance(a, dict)]
    rows_h = [str(x) for x in (t.get("answer_hheader") or [])]
    listed = {str(a.get("answer")): str(a.get("text") or "") for a in answers if str(a.get("answer")) in rows_h}
    options = [(normalize_letter(str(a.get("answer") or "")), str(a.get("text") or "")) for a in answers
               if str(a.get("answer")) not in rows_h]
    correct = [normalize_letter(str(c)) for c in (t.get("correct_answer") or [])]
    question = t["question"].strip()
    layout, rows = "", []
    if rows_h and listed:
        layout, rows = "rows", [(n, listed[n]) for n in rows_h if n in listed]
    elif rows_h:
        in_text = _rows_in_question(question, rows_h)
        layout = "in_question" if all(word for _, word in in_text) else "ordering"
        rows = in_text if layout == "in_question" else [(n, "") for n in rows_h]
    return Question(qid, exam_id, task_id, subject, "matching" if rows_h else "single", question,
                    options, rows, correct, *_split_comment(t.get("comment")), layout=layout)


def read_zno(path: Path, data: Any, include_photo: bool) -> Loaded:
    out = Loaded([])
    pos = 0
    for exam_id, exam in _exams(path, data):
        subject = _subject(exam, path)
        for t_i, t in enumerate(exam["tasks"]):
            qid, pos = str(pos), pos + 1
            out.tasks += 1
            task_id = str(t.get("task_id", t_i)) if isinstance(t, dict) else str(t_i)
            where = f"{path.name}: exam {exam_id}, task {task_id}"
            if not isinstance(t, dict) or not isinstance(t.get("question"), str) or not t["question"].strip():
                out.skip("no question text", f"{where}: `question` is empty or missing", qid)
                continue
            if t.get("with_photo") and not include_photo:
                out.skip("needs a picture", f"{where}: with_photo is true", qid)
                continue
            out.add(zno_question(t, qid, exam_id, task_id, subject), where)
    return out


def read_unlp(path: Path, include_photo: bool) -> Loaded:
    from peft_apps.core.data import read_jsonl

    out = Loaded([])
    for pos, (n, row) in enumerate(read_jsonl(path)):
        out.tasks += 1
        where = f"{path.name}, line {n}"
        choices = row.get("answers") if isinstance(row.get("answers"), list) else row.get("choices")
        if not isinstance(row.get("question"), str) or not row["question"].strip():
            out.skip("no question text", f"{where}: `question` is empty or missing", str(pos))
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


def _span(letters: list[str]) -> str:
    return f"{letters[0]}–{letters[-1]}" if len(letters) > 2 else ", ".join(letters)


def check(q: Question) -> tuple[str, str] | None:
    """Why a question cannot be used, as (reason, what was seen), or None."""
    if not q.options:
        return "no options (open answer)", "`answers` holds no lettered option"
    letters = q.letters
    if any(not m for m in letters):
        return "an option without a marker", f"options {letters}"
    if len(set(letters)) != len(letters):
        dup = sorted({m for m in letters if letters.count(m) > 1})
        return "duplicated option markers", f"{', '.join(dup)} given twice among {', '.join(letters)}"
    if not q.correct:
        return "no correct answer", f"correct_answer is empty; options {_span(letters)}"
    if any(c not in letters for c in q.correct):
        bad = [c for c in q.correct if c not in letters]
        return "correct answer not among the options", f"{', '.join(bad)} not in {_span(letters)}"
    if q.kind == "single" and len(q.correct) != 1:
        return ("several correct answers for a single-choice question",
                f"correct_answer {', '.join(q.correct)}")
    if q.kind == "matching" and len(q.correct) != len(q.rows):
        return ("correct answers do not match the rows",
                f"{len(q.correct)} correct answer(s) for {len(q.rows)} row(s)")
    return None


def load(path: Path, include_photo: bool = False, report: bool = True) -> Loaded:
    from peft_apps.core.io import read_user_text

    path = Path(path)
    text, _ = read_user_text(path)
    stripped = text.lstrip()
    data: Any = None
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    elif stripped.startswith("{"):
        try:  # one JSON object: a ZNO-Eval exam or split file; else JSONL (one question a line)
            whole = json.loads(text)
        except json.JSONDecodeError as e:
            whole = None
            if "\n{" not in stripped.rstrip() and '"tasks"' in stripped[:200000]:
                raise UserError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
        if isinstance(whole, dict) and "question" not in whole:
            data = whole
    loaded = read_zno(path, data, include_photo) if data is not None else read_unlp(path, include_photo)
    if report and loaded.skipped:
        parts = [f"{n} {reason} (e.g. {'; '.join(loaded.examples[reason])})" for reason, n in loaded.skipped.items()]
        warn(f"{path}: {sum(loaded.skipped.values())} of {loaded.tasks} question(s) skipped: " + ", ".join(parts))
    if not loaded.questions:
        raise UserError(f"{path}: no usable questions", hint="a ZNO-Eval .json file or a UNLP .jsonl file")
    return loaded


def answer_text(q: Question, letters: list[str] | None = None) -> str:
    """The answer line: "Відповідь: Б", or for matching "Відповідь: 1-Б, 2-Д, 3-А"."""
    letters = letters if letters is not None else q.correct
    if q.kind == "single":
        return f"Відповідь: {letters[0]}"
    return "Відповідь: " + ", ".join(f"{r}-{c}" for (r, _), c in zip(q.rows, letters) if c)


def read_rationales(path: Path) -> dict[str, str]:
    """A rationale file: JSONL of {"id", "rationale"} (e.g. written by a teacher model)."""
    from peft_apps.core.data import read_jsonl

    out = {}
    for n, row in read_jsonl(path):
        if "id" not in row or not isinstance(row.get("rationale"), str):
            raise UserError(f"{path}, line {n}: needs 'id' and a 'rationale' string")
        out[str(row["id"])] = row["rationale"].strip()
    return out
