"""A small synthetic task the tiny model must learn: the category of the first word of a prompt.

Held-out prompts pair the same words with unseen filler, so a model only scores by reading the word.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CATEGORIES = {
    "animal": ["cat", "dog", "horse", "mouse", "tiger", "eagle", "sheep", "whale"],
    "fruit": ["apple", "pear", "grape", "lemon", "mango", "peach", "plum", "melon"],
    "tool": ["hammer", "saw", "drill", "wrench", "chisel", "spanner", "axe", "file"],
}
FILLER = ["red", "big", "old", "new", "small", "blue", "green", "warm", "cold", "soft"]


def make(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        cat = rng.choice(list(CATEGORIES))
        word = rng.choice(CATEGORIES[cat])
        filler = " ".join(rng.choice(FILLER) for _ in range(rng.randint(1, 4)))
        rows.append({"id": f"s{seed}-{i}", "prompt": f"{word} is {filler}. category?", "completion": cat})
    return rows


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
