from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from peft.config import PeftConfig

from peft_apps.core.tuners._registry import peft_type


@dataclass
class LayerwiseConfig(PeftConfig):
    """Layer-wise partial fine-tuning: freeze the bottom decoder layers, train every weight of the top
    `num_layers` (the code-model study's finding: the bottom layers change least in fine-tuning).

    Each weight-holding module of those layers (linear and norm layers) gets a trainable copy, which the
    adapter saves; a 4-bit or 8-bit layer's copy holds its dequantized weight. Merging puts the copies in
    place of the frozen layers.

    Args:
        num_layers: how many of the top decoder layers train.
        target_modules: filled in when the adapter is created (the full names of the modules copied);
            set it yourself to choose other modules.
        modules_to_save: modules outside the decoder layers trained in full (e.g. ["lm_head"]).
    """

    num_layers: int = field(default=2, metadata={"help": "how many of the top decoder layers train"})
    target_modules: Optional[Union[list[str], str]] = field(default=None, metadata={"help": "modules copied"})
    exclude_modules: Optional[Union[list[str], str]] = field(default=None, metadata={"help": "modules left out"})
    modules_to_save: Optional[list[str]] = field(default=None, metadata={"help": "modules trained in full"})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = peft_type("layerwise")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
