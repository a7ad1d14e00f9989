from peft_apps.core.tuners._registry import register
from peft_apps.core.tuners.layerwise.config import LayerwiseConfig
from peft_apps.core.tuners.layerwise.layer import LayerwiseLayer
from peft_apps.core.tuners.layerwise.model import LayerwiseModel

__all__ = ["LayerwiseConfig", "LayerwiseLayer", "LayerwiseModel"]

register("layerwise", LayerwiseConfig, LayerwiseModel, prefix="layerwise_")
