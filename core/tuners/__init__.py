"""PEFT methods peft does not ship, written as peft tuners (a folder per method: config.py, layer.py,
model.py, as in peft) and registered with peft's own `register_peft_method`.

Importing this package is all plain peft needs to load and save them:

    import peft_apps.core.tuners  # registers ssf, layerwise, dept
    from peft import PeftModel
    model = PeftModel.from_pretrained(base, "runs/sft-demo")

- **ssf**: scaling and shifting features (Lian et al., 2022): a learned scale and shift on the output of
  each target layer. Merges into a layer with a bias (and into one without when `shift=False`).
- **layerwise**: layer-wise partial fine-tuning: the bottom layers stay frozen, every weight of the top
  `num_layers` decoder layers trains (a trainable copy, saved as the adapter). Merges.
- **dept**: decomposed prompt tuning (Shi & Lipani, 2024): a short soft prompt plus a low-rank,
  position-wise update of the input embeddings. Does not merge (the prompt is an extra input).
"""

from peft_apps.core.tuners._registry import peft_type, register
from peft_apps.core.tuners.dept import DePTConfig, DePTModel
from peft_apps.core.tuners.layerwise import LayerwiseConfig, LayerwiseModel
from peft_apps.core.tuners.ssf import SSFConfig, SSFModel

__all__ = ["DePTConfig", "DePTModel", "LayerwiseConfig", "LayerwiseModel", "SSFConfig", "SSFModel", "peft_type",
           "register", "TUNERS"]

#: the methods this package registers, by name
TUNERS = ("ssf", "layerwise", "dept")
