from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from peft.config import PeftConfig

from peft_apps.core.tuners._registry import peft_type


@dataclass
class DePTConfig(PeftConfig):
    """Decomposed prompt tuning (DePT, Shi & Lipani, ICLR 2024): a soft prompt shorter than prompt tuning's,
    plus a low-rank update `A @ B` of the input embeddings by position (A: max_length x r, B: r x hidden),
    so the parameters of a long soft prompt buy a short prompt (less compute per token) and a per-position
    offset.

    For a decoder-only model the prompt goes in front of the sequence (left padding stays between prompt
    and text, masked) and positions are counted from the first real token, so training, batched generation
    and cached decoding see the same offsets. Positions past `max_length` get no offset.

    Args:
        num_virtual_tokens: soft prompt length (the paper: 40-60 where prompt tuning uses 100).
        r: rank of the embedding update.
        max_length: positions the update covers.
        target_modules: filled in with the input embedding's name when the adapter is created.
    """

    num_virtual_tokens: int = field(default=8, metadata={"help": "soft prompt length"})
    r: int = field(default=8, metadata={"help": "rank of the input embedding update"})
    max_length: int = field(default=1024, metadata={"help": "positions the low-rank update covers"})
    target_modules: Optional[Union[list[str], str]] = field(default=None, metadata={"help": "the input embedding"})
    exclude_modules: Optional[Union[list[str], str]] = field(default=None, metadata={"help": "unused"})
    modules_to_save: Optional[list[str]] = field(default=None, metadata={"help": "modules trained in full"})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = peft_type("dept")
        for key in ("num_virtual_tokens", "r", "max_length"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
