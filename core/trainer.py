"""Training: `train()` and its parts live in `core/training/` (one module per concern); this module keeps
the names `peft_apps.core.trainer` has always offered."""

from peft_apps.core.loss import _causal_lm, completion_only_loss  # noqa: F401
from peft_apps.core.training import (  # noqa: F401
    TrainResult,
    TrainingInterrupted,
    choose_batching,
    choose_loss_kernel,
    choose_optim,
    model_card,
    train,
)
from peft_apps.core.training.callbacks import AdaLoraCallback, RichProgressCallback  # noqa: F401
from peft_apps.core.training.plan import _check_gpu_memory  # noqa: F401
