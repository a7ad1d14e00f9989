"""Exam scoring, as the ZNO tuning paper (2025) and the UNLP 2024 shared task report it.

An `evaluate` module kept in the app and loaded by path (a Hub metric cannot load offline):

    import evaluate
    m = evaluate.load("apps/exam/metrics/exam.py")
    m.compute(predictions=["Б", "Г,Б,В", ""], references=["Б", "Г,Д,В", "А"],
              kinds=["single", "matching", "single"], subjects=[...], exams=[...])

Answers are comma-joined letters: one for a single-choice question, one per row for a matching one (an
empty place for a row the answer leaves out: "Б,Б,," earns the points of rows 1 and 2); "" is an answer
the parser could not read.

Definitions
- accuracy: share of single-choice questions answered right (the UNLP shared task's metric).
- points: exam points, 1 per right single-choice answer and 1 per right row of a matching question
  (partial credit: a 4-row matching question gives 0-4 points); `max_points` the most possible;
  `points_share` = points / max_points.
- matching_row_accuracy: share of matching rows answered right.
- unparsed: answers the parser could not read (they score 0).
- by_subject, by_exam: the same per subject and per exam.

Checked against the official scripts: `points` equals NLPForUA/ZNO's tuning/tools/scoring.py (`grade_answer`
through `compute_score`, with a matching task's max grade its number of rows, as that script grades the
Ukrainian exams) on the bundled Ukrainian exams with right, wrong, one-row-off and first-rows-only answers;
its totals, run by hand, are kept in tests/test_exam.py. One difference is by design: that script compares
a partial answer's letters with the first rows, so "2-Д" alone is scored against row 1; here each letter
counts for the row it names. `accuracy` is the UNLP 2024 shared task's (share of right single answers).
"""

from __future__ import annotations

from typing import Any, Sequence

import datasets
import evaluate


def _score(pred: str, gold: str, kind: str) -> tuple[int, int]:
    p, g = pred.split(","), gold.split(",")  # one letter per row; "" for a row the answer leaves out
    if kind == "single":
        return int(bool(p[0]) and p[0] == g[0]), 1
    return sum(bool(a) and a == b for a, b in zip(p, g)), len(g)


def _summary(rows: list[tuple[str, str, str]]) -> dict[str, Any]:
    single = [(p, g) for p, g, k in rows if k == "single"]
    matching = [(p, g) for p, g, k in rows if k == "matching"]
    pts = [_score(p, g, k) for p, g, k in rows]
    got, most = sum(a for a, _ in pts), sum(b for _, b in pts)
    m_pts = [_score(p, g, "matching") for p, g in matching]
    return {"n": len(rows), "single": len(single), "matching": len(matching),
            "accuracy": sum(_score(p, g, "single")[0] for p, g in single) / len(single) if single else None,
            "points": got, "max_points": most, "points_share": got / most if most else None,
            "matching_row_accuracy": (sum(a for a, _ in m_pts) / sum(b for _, b in m_pts)) if m_pts else None,
            "unparsed": sum(not p for p, _, _ in rows)}


def compute(predictions: Sequence[str], references: Sequence[str], kinds: Sequence[str] | None = None,
            subjects: Sequence[str] | None = None, exams: Sequence[str] | None = None) -> dict[str, Any]:
    n = len(predictions)
    kinds = list(kinds or ["single"] * n)
    rows = list(zip(predictions, references, kinds))
    out = _summary(rows)
    for name, keys in (("by_subject", subjects), ("by_exam", exams)):
        if keys is not None and len(set(keys)) > 1:
            out[name] = {k: _summary([r for r, kk in zip(rows, keys) if kk == k]) for k in sorted(set(keys))}
    return out


class Exam(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=__doc__,
            citation="Empowering Smaller Models: Tuning LLaMA and Gemma with Chain-of-Thought for Ukrainian Exam "
                     "Tasks, 2025; UNLP 2024 shared task",
            inputs_description="predictions, references: comma-joined answer letters; kinds: single or matching; "
                               "subjects, exams: optional group names",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, kinds=None, subjects=None, exams=None) -> dict[str, Any]:
        return compute(predictions, references, kinds, subjects, exams)
