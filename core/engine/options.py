"""What the engine's callers pass around: generation settings and cached prefixes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

BASE = "__base__"  # the adapter name meaning "the base model, adapters disabled"


@dataclass
class GenerationOptions:
    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.95
    stop: list[str] = field(default_factory=list)
    batch_size: int = 8
    seed: int | None = None
    # Sampling in the prefix-cache path: one seed per row (per call of `PrefixTree.generate`), each row
    # drawing from its own generator, so a row's sample does not depend on the batch it shares.
    row_seeds: list[int] | None = None

    @staticmethod
    def spread_seeds(seed: int, count: int) -> list[int]:
        """`count` independent row seeds drawn from one seed (numpy's SeedSequence: no two runs' seeds
        overlap the way `seed * k + i` would)."""
        import numpy as np

        return [int(s) for s in np.random.SeedSequence(seed).generate_state(count)] if count else []

    def for_rows(self, rows: list[int]) -> "GenerationOptions":
        """These options for a subset of the rows (their seeds, in that order); itself without row seeds."""
        if self.row_seeds is None:
            return self
        return GenerationOptions(**{**self.__dict__, "row_seeds": [self.row_seeds[i] for i in rows]})

    def for_row_alone(self, row: int, **changes: Any) -> "GenerationOptions":
        """These options for one row generated on its own (HF generate): its seed as the seed."""
        seed = {"seed": self.row_seeds[row]} if self.row_seeds else {}
        return GenerationOptions(**{**self.__dict__, "row_seeds": None, **seed, **changes})
    # Prompt-lookup speculation (greedy decoding in the prefix-cache path): up to `lookahead` draft tokens
    # per row, copied from where the row's latest n-gram last occurred in its prompt or output, are
    # verified in one forward pass. Rows x (1 + drafts) stays within `step_tokens`, so full batches
    # decode one token per row and small batches (a stage's long tail) verify several. 0 turns it off.
    lookahead: int = 10
    step_tokens: int = 64


@dataclass
class Prefix:
    """A token prefix and its KV cache, from `Engine.encode_prefix` / `extend_prefixes`.

    With shared-prefix attention (see `_cascade_attention`) an extension keeps only its own K/V (`tail`,
    per layer) and points at the `root` it extends, so a root's cache is never copied, neither into
    its extensions nor into the batches that use it. Otherwise `cache` holds the whole prefix."""
    ids: list[int]
    cache: Any = None
    root: "Prefix | None" = None
    tail: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.ids)


def adapter_per_row(adapter: str | Sequence[str | None] | None, n: int, loaded: Sequence[str]) -> list[str]:
    """Each of `n` rows' adapter: one name for all, or one per row; None is the first loaded adapter (the
    base when none is loaded). An unknown name or a wrong count is a UserError."""
    from peft_apps.core.errors import UserError

    per_row = list(adapter) if isinstance(adapter, (list, tuple)) else [adapter] * n
    if len(per_row) != n:
        raise UserError(f"{len(per_row)} adapter names for {n} prompts")
    default = loaded[0] if loaded else BASE
    per_row = [default if a is None else a for a in per_row]
    for a in set(per_row) - {BASE}:
        if a not in loaded:
            raise UserError(f"unknown adapter {a!r}; loaded: {', '.join(loaded) or '(none)'}")
    return per_row
