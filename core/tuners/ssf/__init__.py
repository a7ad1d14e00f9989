from peft_apps.core.tuners._registry import register
from peft_apps.core.tuners.ssf.config import SSFConfig
from peft_apps.core.tuners.ssf.layer import SSFLayer
from peft_apps.core.tuners.ssf.model import SSFModel

__all__ = ["SSFConfig", "SSFLayer", "SSFModel"]

register("ssf", SSFConfig, SSFModel, prefix="ssf_")
