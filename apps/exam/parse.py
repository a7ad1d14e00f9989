"""Answer extraction from free model text: the last "Відповідь:" (or "Answer:"), look-alike letters
normalised, single-choice and matching answers in the forms models write.

    extract("... Отже, правильна відповідь В.\nВідповідь: В", "single", ["А", "Б", "В", "Г"])   -> ["В"]
    extract("Відповідь: 1-Б, 2 – Д, 3)A", "matching", ["А", "Б", "В", "Г", "Д"], 3)      -> ["Б", "Д", "А"]
    extract("Відповідь: В;Д;А;Б", "matching", letters, 4)                                -> ["В", "Д", "А", "Б"]

Latin letters that look like Cyrillic ones (A/А, B/В, C/С, E/Е, I/І, H/Н, K/К, M/М, O/О, P/Р, T/Т,
X/Х, and their lower case) are read as the Cyrillic letter: models mix the two alphabets. An answer
that cannot be read returns None (it scores 0 and is counted), and so does a hedge between options ("А або
Б", "А/Б", "А, Б"). A matching answer that gives some rows ("1-Б, 2-Б" of four) is read with "" for the
rows it leaves out: it earns the points of the rows it gives.
"""

from __future__ import annotations

import re
from collections import Counter

LOOKALIKE = {"A": "А", "B": "В", "C": "С", "E": "Е", "I": "І", "H": "Н", "K": "К", "M": "М", "O": "О", "P": "Р",
             "T": "Т", "X": "Х", "a": "А", "c": "С", "e": "Е", "i": "І", "o": "О", "p": "Р", "x": "Х", "k": "К"}
KEY = re.compile(r"(відповідь|відповіді|answer)\s*[:：]?", re.I)
L = "A-Za-zА-ЯҐЄІЇа-яґєії"
LETTER = re.compile(rf"(?<![{L}0-9])([{L}])(?![{L}])")
PAIR = re.compile(rf"(?<![0-9])([1-9])\s*(?:[-–—:.)=→>]|\s)\s*([{L}])(?![{L}])")
# Two different letters offered as alternatives: "А або Б", "А чи Б", "A or B", "А/Б", "А, Б"
HEDGE = re.compile(rf"(?<![{L}0-9])([{L}])\s*(?:або|чи|or|/|,|;|\||&|та|і|и|and)\s*([{L}])(?![{L}])", re.I)


def normalize_letter(s: str) -> str:
    s = s.strip().strip(".)(")
    out = []
    for ch in s:
        u = LOOKALIKE.get(ch) or ch.upper()
        out.append(LOOKALIKE.get(u, u))  # "b" -> "B" -> "В"
    return "".join(out)


def _segment(text: str) -> str:
    """Where the answer is: after the last key word (to the end), else the last non-empty line."""
    hits = list(KEY.finditer(text))
    if hits:
        return text[hits[-1].end():][:300]
    lines = [ln for ln in text.strip().split("\n") if ln.strip()]
    return lines[-1][:300] if lines else ""


def extract(text: str, kind: str, letters: list[str], n_rows: int = 0) -> list[str] | None:
    seg = re.sub(r"[*_`#]", "", _segment(text or "")).strip()  # Markdown emphasis around the answer
    if not seg:
        return None
    if kind == "single":
        first = re.sub(r"\([^)]*\)", " ", seg.split("\n", 1)[0])  # "В (А і Б неправильні)" explains, not hedges
        for m in HEDGE.finditer(first):
            a, b = normalize_letter(m.group(1)), normalize_letter(m.group(2))
            if a != b and a in letters and b in letters and m.group(1).isupper() and m.group(2).isupper():
                return None  # a hedge ("А або Б") is no answer
        found = [normalize_letter(m.group(1)) for m in LETTER.finditer(seg)]
        upper = [f for f, m in zip(found, LETTER.finditer(seg)) if m.group(1).isupper() and f in letters]
        if upper:
            return [upper[0]]
        lower = [f for f in found if f in letters]  # "відповідь: б"
        return [lower[0]] if lower and len(seg.strip()) <= 3 else None
    pairs: dict[int, str] = {}
    for m in PAIR.finditer(seg):
        row, letter = int(m.group(1)), normalize_letter(m.group(2))
        if 1 <= row <= n_rows and letter in letters and row not in pairs:
            pairs[row] = letter
    if pairs:  # every row given, or some ("1-Б, 2-Б" of four): "" for a row not given
        return [pairs.get(r, "") for r in range(1, n_rows + 1)]
    seq = [normalize_letter(m.group(1)) for m in LETTER.finditer(seg)]
    seq = [s for s in seq if s in letters]
    if len(seq) >= n_rows:  # "В;Д;А;Б", "В Д А Б"
        return seq[:n_rows]
    return None


def points(kind: str, predicted: list[str] | None, correct: list[str]) -> int:
    """Exam points: 1 for a right single-choice answer; 1 per right row of a matching question."""
    if not predicted:
        return 0
    if kind == "single":
        return int(predicted[0] == correct[0])
    return sum(p == c for p, c in zip(predicted, correct))


def vote(answers: list[list[str] | None]) -> tuple[list[str] | None, Counter]:
    """Self-consistency: the most common readable answer (ties: the one seen first); None if none."""
    counts = Counter(tuple(a) for a in answers if a)
    if not counts:
        return None, counts
    best = max(counts.values())
    for a in answers:
        if a and counts[tuple(a)] == best:
            return list(a), counts
    return None, counts
