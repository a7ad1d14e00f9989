from peft_apps.core.tuners._registry import register
from peft_apps.core.tuners.dept.config import DePTConfig
from peft_apps.core.tuners.dept.layer import DePTEmbedding
from peft_apps.core.tuners.dept.model import DePTModel

__all__ = ["DePTConfig", "DePTEmbedding", "DePTModel"]

register("dept", DePTConfig, DePTModel, prefix="dept_")
