"""Length-grouped batches with little padding, in a random but reproducible order.

transformers' LengthGroupedSampler sorts inside "megabatches" of at most 50 batches, and fewer on
small datasets (`len // (4 * batch)`): on a few hundred records it still leaves ~18% padding where a
sort over the data leaves ~6%. This sampler shuffles, sorts within pools of `pool_batches` batches
(the whole set when it is smaller), cuts batches, and shuffles the batch order, all from a
generator seeded by (seed, epoch), so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class SortedBatchSampler(Sampler[int]):
    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, pool_batches: int = 256):
        self.lengths = list(lengths)
        self.batch_size = max(1, batch_size)
        self.seed = seed
        self.pool = max(1, pool_batches) * self.batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()  # host: indices
        batches: list[list[int]] = []
        for start in range(0, len(order), self.pool):
            pool = sorted(order[start:start + self.pool], key=lambda i: self.lengths[i], reverse=True)
            batches.extend(pool[i:i + self.batch_size] for i in range(0, len(pool), self.batch_size))
        if not batches:
            return iter(())
        # The DataLoader cuts consecutive indices into batches, so a short batch must come last.
        # The longest batch goes first: an out-of-memory error shows at step one, not hours in.
        short = [b for b in batches if len(b) < self.batch_size]
        full = [b for b in batches if len(b) == self.batch_size]
        if full:
            longest = max(range(len(full)), key=lambda i: self.lengths[full[i][0]])
            head, rest = [full[longest]], full[:longest] + full[longest + 1:]
        else:
            head, rest = [], []
        perm = torch.randperm(len(rest), generator=g).tolist()  # host: indices
        ordered = head + [rest[i] for i in perm] + short
        return iter([i for b in ordered for i in b])
