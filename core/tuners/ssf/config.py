from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from peft.config import PeftConfig

from peft_apps.core.tuners._registry import peft_type


@dataclass
class SSFConfig(PeftConfig):
    """Scaling and shifting features (SSF, Lian et al., NeurIPS 2022): `y = scale * layer(x) + shift`, one
    scale and one shift per output feature of each target layer.

    Args:
        target_modules: module names (or a regex, or "all-linear") whose outputs are scaled and shifted;
            linear layers (bitsandbytes 4/8-bit included), GPT-2 Conv1D and norm layers.
        exclude_modules: names (or a regex) left out.
        shift: learn the shift too. Without it the adapter merges into bias-free layers.
        init_std: 0 starts at the identity (scale 1, shift 0: the untrained adapter is the base model);
            the paper draws scale ~ N(1, 0.02) and shift ~ N(0, 0.02).
        modules_to_save: modules trained in full and saved with the adapter.
    """

    target_modules: Optional[Union[list[str], str]] = field(default=None, metadata={"help": "layers to adapt"})
    exclude_modules: Optional[Union[list[str], str]] = field(default=None, metadata={"help": "layers left out"})
    shift: bool = field(default=True, metadata={"help": "learn a shift as well as a scale"})
    init_std: float = field(default=0.0, metadata={"help": "0: identity start; paper: 0.02"})
    modules_to_save: Optional[list[str]] = field(default=None, metadata={"help": "modules trained in full"})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = peft_type("ssf")
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if self.init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {self.init_std}")
