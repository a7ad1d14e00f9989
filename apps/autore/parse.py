"""Parsing model text for the three RHF stages: never raises, never evaluates, counts what it drops.

Every function takes arbitrary text and returns what it could use plus a `Counter` of what it could
not (malformed lines, unknown relation names, entities not found in the passage). Entity names are
repaired against the passage: exact, then case-insensitive, then the closest passage n-gram
(difflib ratio >= 0.85), as AutoRE does with fuzzy matching.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import dataclass

from .docred import SEP, name_to_id, relation_table

_BULLET = re.compile(r"^\s*(?:[-*•]+|\d+[.)])\s*")

# relation id -> its inverse (added at inference); symmetric relations map to themselves
INVERSE: dict[str, str] = {
    "P527": "P361", "P361": "P527", "P155": "P156", "P156": "P155", "P36": "P1376", "P1376": "P36",
    "P1365": "P1366", "P1366": "P1365", "P26": "P26", "P3373": "P3373", "P190": "P190",
    "P150": "P131", "P710": "P1344", "P1344": "P710", "P355": "P749", "P749": "P355",
    "P674": "P1441", "P1441": "P674", "P22": "P40", "P25": "P40",
}


def _clean(line: str) -> str:
    return _BULLET.sub("", line).strip().strip('"').strip()


def parse_relations(text: str, stats: Counter) -> list[str]:
    """Relation ids named in `text`, one per line, in order, without repeats."""
    table = name_to_id()
    out: list[str] = []
    for line in str(text).splitlines():
        name = _clean(line).rstrip(".").lower()
        if not name:
            continue
        rid = table.get(name)
        if rid is None:
            stats["unknown_relation"] += 1
            continue
        if rid not in out:
            out.append(rid)
    return out


class Passage:
    """A passage with fast entity-name repair."""

    def __init__(self, text: str):
        self.text = text
        self.lower = text.lower()
        self.tokens = text.split()
        # the passage without whitespace, and where each of its characters sits in the passage:
        # "People's" finds "People 's" (DocRED passages are space-joined tokens)
        self.squashed_index = [i for i, ch in enumerate(self.lower) if not ch.isspace()]
        self.squashed = "".join(self.lower[i] for i in self.squashed_index)
        self._repaired: dict[str, str | None] = {}

    def repair(self, name: str) -> str | None:
        """`name` as it is written in the passage, or None (remembered per passage)."""
        if name not in self._repaired:
            self._repaired[name] = self._repair(name)
        return self._repaired[name]

    def _repair(self, name: str) -> str | None:
        name = " ".join(name.split())
        if not name:
            return None
        if name in self.text:
            return name
        i = self.lower.find(name.lower())
        if i != -1:
            return self.text[i:i + len(name)]
        sq = "".join(name.lower().split())
        j = self.squashed.find(sq)
        if j != -1:
            return self.text[self.squashed_index[j]:self.squashed_index[j + len(sq) - 1] + 1]
        n = len(name.split())
        best, best_ratio = None, 0.85
        for k in {max(1, n - 1), n, n + 1}:
            for j in range(0, max(0, len(self.tokens) - k + 1)):
                cand = " ".join(self.tokens[j:j + k])
                r = difflib.SequenceMatcher(None, name.lower(), cand.lower()).ratio()
                if r > best_ratio:
                    best, best_ratio = cand, r
        return best


def parse_heads(text: str, passage: Passage, stats: Counter) -> list[str]:
    out: list[str] = []
    for line in str(text).splitlines():
        name = _clean(line)
        if not name:
            continue
        if SEP.strip() in name:
            stats["malformed_head"] += 1
            continue
        fixed = passage.repair(name)
        if fixed is None:
            stats["head_not_in_text"] += 1
            continue
        if fixed not in out:
            out.append(fixed)
    return out


@dataclass(frozen=True)
class Triple:
    head: str
    relation_id: str
    tail: str
    source: str = "model"  # or "inverse"

    @property
    def relation(self) -> str:
        return relation_table()[self.relation_id][0]


def _triples(text: str, passage: Passage | None, stats: Counter, only: str | None) -> list[Triple]:
    """`head | relation | tail` lines -> triples; `only`: the one relation id the lines must name."""
    table = name_to_id()
    out: list[Triple] = []
    for line in str(text).splitlines():
        line = _clean(line)
        if not line:
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 3 or not parts[0] or not parts[2]:
            stats["malformed_fact"] += 1
            continue
        rid = table.get(parts[1].lower())
        if only is not None and rid != only:
            stats["fact_relation_mismatch"] += 1
            continue
        if rid is None:
            stats["unknown_relation"] += 1
            continue
        h, t = parts[0], parts[2]
        if passage is not None:
            h, t = passage.repair(h), passage.repair(t)
            if h is None or t is None:
                stats["fact_entity_not_in_text"] += 1
                continue
        tr = Triple(h, rid, t)
        if tr not in out:
            out.append(tr)
    return out


def parse_facts(text: str, relation_id: str, passage: Passage, stats: Counter) -> list[Triple]:
    """`head | relation | tail` lines for one (relation, head) call: other relations are counted, dropped."""
    return _triples(text, passage, stats, only=relation_id)


def add_inverses(triples: list[Triple]) -> list[Triple]:
    have = {(t.head, t.relation_id, t.tail) for t in triples}
    out = list(triples)
    for t in triples:
        inv = INVERSE.get(t.relation_id)
        if inv and (t.tail, inv, t.head) not in have:
            have.add((t.tail, inv, t.head))
            out.append(Triple(t.tail, inv, t.head, source="inverse"))
    return out


def parse_triple_lines(text: str, passage: Passage | None, stats: Counter) -> list[Triple]:
    """Free `head | relation | tail` lines (any relation): the form `score` reads raw model text in."""
    return _triples(text, passage, stats, only=None)
