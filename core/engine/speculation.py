"""Prompt-lookup speculation: draft tokens copied from where a row's latest n-gram occurred before in its
prompt or output, verified by the decode loop in one forward pass (`decode.PrefixDecoder`)."""

from __future__ import annotations


class Drafter:
    """Prompt-lookup drafts per row: the tokens that followed the latest earlier occurrence of the row's
    last 3 (else 2, else 1) tokens in its prompt and output. Index kept incrementally, so a draft costs
    a dict lookup rather than a scan of the context."""

    N = (3, 2, 1)

    def __init__(self, contexts: list[list[int]] | None):
        self.on = contexts is not None
        self.ctx = contexts or []
        self.index: list[dict[tuple[int, ...], int]] = []
        for c in self.ctx:
            idx: dict[tuple[int, ...], int] = {}
            for e in range(len(c) - 1):
                self._register(c, idx, e)
            self.index.append(idx)

    def _register(self, c: list[int], idx: dict[tuple[int, ...], int], e: int) -> None:
        """Index the n-grams ending at `e`, whose continuation c[e + 1] is known."""
        for n in self.N:
            if e + 1 >= n:
                idx[tuple(c[e + 1 - n:e + 1])] = e

    def push(self, j: int, tok: int) -> None:
        self.ctx[j].append(tok)
        self._register(self.ctx[j], self.index[j], len(self.ctx[j]) - 2)

    def draft(self, j: int, k: int) -> list[int]:
        if k <= 0:
            return []
        c, idx = self.ctx[j], self.index[j]
        for n in self.N:
            e = idx.get(tuple(c[-n:])) if len(c) >= n else None
            if e is not None:
                return c[e + 1:e + 1 + k]
        return []

    def select(self, keep: list[int]) -> None:
        if self.on:
            self.ctx = [self.ctx[j] for j in keep]
            self.index = [self.index[j] for j in keep]
