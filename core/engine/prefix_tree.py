"""The core's prefix planner: many prompts over a few shared texts, planned, cached and batched once.

An app asking several questions about one text (a document's relation, head and facts questions; a
diff's review questions; k samples of one exam question) names, for each call, the prefixes it may
start with, deepest first; the tree encodes each prefix once, extends prefixes in batched forward
passes, and generates every call over the deepest cached prefix its prompt starts with:

    tree = PrefixTree(engine)
    tree.roots({("doc", u): doc_ids[u] for u in docs}, adapter)                    # each text once
    tree.extend([(("rel", u, r), ("doc", u), rel_ids) ...], adapter)               # a longer shared prefix
    tree.share({("group", u, r): (("rel", u, r), [ids of the calls]) ...}, adapter)  # their common prefix
    texts = tree.generate([((("group", u, r), ("doc", u)), call_ids) ...], adapter, options)

A prefix is only ever a token prefix of the prompts that use it, so prefix ids + suffix ids are
exactly the prompt's ids: a call whose prompt does not start with any of its prefixes (a tokenizer
that merges across the cut) runs whole, and is counted in `whole_calls`.
"""

from __future__ import annotations

import os
from typing import Hashable, Iterable, Sequence

from .options import GenerationOptions, Prefix

MIN_EXTENSION = 4  # shorter extensions cost a forward pass for too little shared work


class PrefixTree:
    def __init__(self, engine):
        self.engine = engine
        self.prefixes: dict[Hashable, Prefix] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self.prefixes

    def roots(self, items: dict[Hashable, Sequence[int]], adapter: str | None = None) -> None:
        """Encode each root prefix not cached yet, in batches (keys should tell adapters apart: a cache is per adapter)."""
        todo = {key: list(ids) for key, ids in items.items() if key not in self.prefixes}
        self.prefixes.update(zip(todo, self.engine.encode_prefixes(list(todo.values()), adapter)))

    def extend(self, specs: Iterable[tuple[Hashable, Hashable, Sequence[int]]], adapter: str | None = None) -> None:
        """Cache each (key, parent key, ids) as the parent's prefix extended to `ids`, all in batched
        forward passes; skipped where the parent is not cached, `ids` does not start with it or adds fewer
        than `MIN_EXTENSION` tokens."""
        todo: dict[Hashable, tuple[Prefix, list[int]]] = {}
        for key, parent, ids in specs:
            base = self.prefixes.get(parent)
            ids = list(ids)
            if key in self.prefixes or key in todo or base is None or len(ids) - len(base) < MIN_EXTENSION \
                    or ids[:len(base)] != base.ids:
                continue
            todo[key] = (base, ids[len(base):])
        self.prefixes.update(zip(todo, self.engine.extend_prefixes(list(todo.values()), adapter)))

    def share(self, groups: dict[Hashable, tuple[Hashable, list[Sequence[int]]]], adapter: str | None = None) -> None:
        """A group's calls share the longest common prefix of their prompts: cached under the group's key,
        built on its parent. Only groups of two or more calls, each longer than that prefix."""
        specs = []
        for key, (parent, prompts) in groups.items():
            common = os.path.commonprefix([list(p) for p in prompts])
            if len(prompts) > 1 and all(len(p) > len(common) for p in prompts):
                specs.append((key, parent, common))
        self.extend(specs, adapter)

    def generate(self, calls: Sequence[tuple[Sequence[Hashable], Sequence[int]]], adapter: str | None = None,
                 options: GenerationOptions | None = None, budgets: Sequence[int] | None = None) -> list[str]:
        """Complete every call (its candidate prefix keys, deepest first; its prompt ids) in shared batches,
        each over the first cached prefix its prompt starts with and goes beyond; `budgets`: per-call
        `max_new_tokens`. Calls with no such prefix run whole; their indices are in `whole_calls`."""
        o = options or GenerationOptions()
        outs = [""] * len(calls)
        rows, where = [], []
        for i, (keys, ids) in enumerate(calls):
            ids = list(ids)
            for key in keys:
                p = self.prefixes.get(key)
                if p is not None and ids[:len(p)] == p.ids and len(ids) > len(p):
                    rows.append((key, ids[len(p):]))
                    where.append(i)
                    break
        if rows:
            texts = self.engine.generate_prefixed(rows, self.prefixes, adapter, options=o.for_rows(where),
                                                  max_new_tokens_per_row=[budgets[i] for i in where] if budgets else None)
            for i, t in zip(where, texts):
                outs[i] = t
        self.whole_calls = sorted(set(range(len(calls))) - set(where))
        for i in self.whole_calls:
            budget = o.for_row_alone(i, **({"max_new_tokens": budgets[i]} if budgets else {}))
            outs[i] = self.engine.generate_ids([list(calls[i][1])], adapter=adapter, options=budget)[0]
        return outs
