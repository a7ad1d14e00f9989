"""The running batch of the scheduler: its rows, their KV cache in preallocated slots, mask and positions.

Rows join and leave the batch between decoding steps. A plain cache would copy itself whole at each change
(`torch.cat` to add rows, an index-select to drop them): with a dozen rows over long documents, that copying
cost more than the decoding. Here every layer's keys and values live in one buffer of `capacity` rows and
spare columns on both sides, the tokens of all rows right-aligned at one column (`end`):

    join     the new rows' keys and values are written into free row slots, right-aligned; only when a
             new row is longer than the batch's width and the buffer has no room left of it, or the rows
             outnumber the slots, is the buffer reallocated (geometrically, so rarely; the new buffer is
             left unfilled and only the used part copied: zeroing it was most of joining's cost)
    leave    the rows that stay fill the holes of those that left from the end of the batch: only the moved
             rows are copied, and the batch's order changes accordingly (`select` returns it)
    step     the model appends one column for every row (`SlotLayer.update`)
    spans    attention reads each row's keys from its first used column only, by runs of consecutive
             rows (`spans`): rows of short prompts beside long ones are mostly left padding, which
             would otherwise be read, at every layer of every step, as if it were keys

Columns no row uses any more (on the left, once long rows leave) are dropped by moving `start`.
"""

from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def _slot_layer_cls():
    from transformers.cache_utils import DynamicLayer

    class SlotLayer(DynamicLayer):
        """A DynamicLayer over rows [0, n) and columns [start, end) of preallocated buffers."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int, left: int, right: int):
            super().__init__()
            self.device, self.is_initialized = keys.device, True
            self.dtype = keys.dtype
            b, h, w, d = keys.shape
            # unfilled buffers: only what the batch's view shows (rows [0, n), columns [start, end)) must hold
            # finite numbers, since a column the mask hides is still multiplied by zero (0 x NaN is NaN), so
            # `add` zeroes the padding columns it exposes. Filling whole buffers with zeros cost more than all
            # the rest of joining: on SmolLM2, 4.8 s of a 32 s concurrent run, mostly in reallocations
            self._k = keys.new_empty((max(capacity, b), h, left + w + right, d))
            self._v = values.new_empty((max(capacity, b), values.shape[1], left + w + right, values.shape[-1]))
            self.n, self.start, self.end = b, left, left + w
            self._k[:b, :, left:left + w] = keys
            self._v[:b, :, left:left + w] = values
            self._view()

        def _view(self) -> None:
            self.keys = self._k[:self.n, :, self.start:self.end]
            self.values = self._v[:self.n, :, self.start:self.end]

        def _realloc(self, rows: int, left: int, right: int) -> None:
            """New buffers with room for `rows` rows, `left` free columns before the used ones and `right`
            after; the used part copied once."""
            w = self.end - self.start
            k = self._k.new_empty((rows, self._k.shape[1], left + w + right, self._k.shape[3]))
            v = self._v.new_empty((rows, self._v.shape[1], left + w + right, self._v.shape[3]))
            k[:self.n, :, left:left + w] = self._k[:self.n, :, self.start:self.end]
            v[:self.n, :, left:left + w] = self._v[:self.n, :, self.start:self.end]
            self._k, self._v, self.start, self.end = k, v, left, left + w

        def update(self, key_states, value_states, *args, **kwargs):
            m = key_states.shape[-2]
            if self.end + m > self._k.shape[2]:
                self._realloc(self._k.shape[0], self.start, max(m, self.end - self.start, 64))
            self._k[:self.n, :, self.end:self.end + m] = key_states
            self._v[:self.n, :, self.end:self.end + m] = value_states
            self.end += m
            self._view()
            return self.keys, self.values

        def add(self, keys: torch.Tensor, values: torch.Tensor) -> None:
            """Rows appended, their tokens right-aligned with the batch's (the batch widens on the left
            when they are longer)."""
            b, w = keys.shape[0], keys.shape[2]
            rows = self._k.shape[0]
            need_rows = self.n + b > rows
            need_left = self.end - w < 0
            if need_rows or need_left:
                width = self.end - self.start
                self._realloc(max(rows * 2, self.n + b) if need_rows else rows,
                              max(w - width, 0) + max(w, width) // 2 if need_left else self.start,
                              self._k.shape[2] - self.end)
            start = min(self.start, self.end - w)
            if start < self.start:  # wider: the rows' new columns are masked padding
                self._k[:self.n, :, start:self.start] = 0
                self._v[:self.n, :, start:self.start] = 0
            self.start = start
            new = slice(self.n, self.n + b)
            if self.end - w > start:
                self._k[new, :, start:self.end - w] = 0
                self._v[new, :, start:self.end - w] = 0
            self._k[new, :, self.end - w:self.end] = keys
            self._v[new, :, self.end - w:self.end] = values
            self.n += b
            self._view()

        def move(self, pairs: list[tuple[int, int]], n: int) -> None:
            """Row `src` copied into slot `dst` for each pair; `n` rows remain."""
            for dst, src in pairs:
                self._k[dst, :, self.start:self.end] = self._k[src, :, self.start:self.end]
                self._v[dst, :, self.start:self.end] = self._v[src, :, self.start:self.end]
            self.n = n
            self._view()

        def drop_left(self, columns: int) -> None:
            self.start += columns
            self._view()

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            keep = indices.tolist()
            self._k[:len(keep)] = self._k[indices]
            self._v[:len(keep)] = self._v[indices]
            self.n = len(keep)
            self._view()

    return SlotLayer


def _unused_left(mask: torch.Tensor) -> int:
    """How many leading columns of `mask` no row uses."""
    return int((mask.sum(0) == 0).long().cumprod(0).sum())


def attention_spans(first: list[int], width: int, call_cost: int = 256) -> list[tuple[int, int, int]]:
    """Runs of consecutive rows `(a, z, column)` covering rows [0, n), each to be attended from `column`
    (the run's earliest first used column) to `width`: the partition that reads the fewest keys, counting
    `call_cost` keys for every run (one more attention call per layer). Dynamic programming over the
    row order, O(rows^2)."""
    n = len(first)
    best, cut = [0] + [0] * n, [0] * (n + 1)
    for i in range(1, n + 1):
        low, best[i] = width, None
        for j in range(i - 1, -1, -1):
            low = min(low, first[j])
            cost = best[j] + call_cost + (i - j) * (width - low)
            if best[i] is None or cost < best[i]:
                best[i], cut[i] = cost, j
    spans, i = [], n
    while i > 0:
        j = cut[i]
        spans.append((j, i, min(first[j:i])))
        i = j
    return spans[::-1]


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - t.shape[1]
    return t if missing <= 0 else torch.cat([t.new_zeros((t.shape[0], missing)), t], dim=1)


class RunningBatch:
    """Rows decoding together: `rows`, their `cache` (slot layers), `mask` [rows, width], `last_pos` (each
    row's last position) and `next_tokens` (each row's next input)."""

    def __init__(self, capacity: int = 8, room: int = 128):
        self.capacity, self.room = capacity, room
        self.rows: list = []
        self.cache = None
        self.mask: torch.Tensor | None = None
        self.last_pos: torch.Tensor | None = None
        self.next_tokens: list[int] = []
        self._spans: list[tuple[int, int, int]] | None = None
        self._first: list[int] = []  # each row's first attended column, with `_spans`

    def spans(self) -> list[tuple[int, int, int]]:
        """The attention spans of the rows (`attention_spans`), computed again only when rows join or
        leave: a step appends a column on the right, which moves no row's first used column."""
        if self._spans is None:
            self._first = (self.mask.cumsum(1) == 0).sum(1).tolist()
            self._spans = attention_spans(self._first, self.mask.shape[1])
        return self._spans

    def keys_read(self, by_rows: bool) -> int:
        """The keys a decoding step's attention reads in each layer: every row from its own first attended
        column (`by_rows`: the engine's decoding kernel), else every run of rows from the run's (SDPA's runs,
        `spans`)."""
        spans, width = self.spans(), self.mask.shape[1]
        if by_rows:
            return sum(width - f for f in self._first)
        return sum((z - a) * (width - col) for a, z, col in spans)

    def __len__(self) -> int:
        return len(self.rows)

    def join(self, rows: list, cache, index: torch.Tensor, mask: torch.Tensor, last_pos: torch.Tensor,
             tokens: list[int]) -> None:
        """Rows `index` of a prefill pass's `cache` (and of its `mask`, `last_pos`) join the batch."""
        self._spans = None
        keep = index.tolist()
        if keep == list(range(keep[0], keep[0] + len(keep))):  # consecutive rows: views, not copies
            index = slice(keep[0], keep[0] + len(keep))
        mask, last_pos = mask[index], last_pos[index]
        used = _unused_left(mask)
        mask = mask[:, used:]
        if not self.rows:
            slot = _slot_layer_cls()
            for i, layer in enumerate(cache.layers):
                # room on the left for rows longer than these (the batch's width doubled), so that the
                # first joins of longer rows do not reallocate
                cache.layers[i] = slot(layer.keys[index, :, used:], layer.values[index, :, used:],
                                       max(self.capacity, 2 * len(rows)), max(self.room, mask.shape[1]), self.room)
            self.cache, self.mask, self.last_pos = cache, mask, last_pos.clone()
            self.rows, self.next_tokens = list(rows), list(tokens)
            return
        for layer, new in zip(self.cache.layers, cache.layers):
            layer.add(new.keys[index, :, used:], new.values[index, :, used:])
        width = max(self.mask.shape[1], mask.shape[1])
        self.mask = torch.cat([_pad_left(self.mask, width), _pad_left(mask, width)])
        self.last_pos = torch.cat([self.last_pos, last_pos])
        self.rows += rows
        self.next_tokens += tokens

    def select(self, keep: list[int]) -> None:
        """Keep the rows at these positions: the holes of the others are filled from the end of the batch
        (only the moved rows are copied), so the order changes; rows, mask and positions follow."""
        n = len(keep)
        if n == len(self.rows):
            return
        self._spans = None
        if n == 0:
            self.__init__(self.capacity, self.room)
            return
        kept = set(keep)
        holes = [j for j in range(n) if j not in kept]
        movers = [j for j in keep if j >= n]
        order = list(range(len(self.rows)))
        for h, m in zip(holes, movers):
            order[h] = m
        order = order[:n]
        for layer in self.cache.layers:
            layer.move(list(zip(holes, movers)), n)
        index = torch.tensor(order, dtype=torch.long, device=self.mask.device)
        self.mask, self.last_pos = self.mask[index], self.last_pos[index]
        self.rows = [self.rows[j] for j in order]
        self.next_tokens = [self.next_tokens[j] for j in order]
        unused = _unused_left(self.mask)
        if unused:
            self.mask = self.mask[:, unused:]
            for layer in self.cache.layers:
                layer.drop_left(unused)
