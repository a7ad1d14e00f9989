"""Keep the terminal readable: library progress bars and known-harmless warnings off.

The core shows its own rich progress; `datasets`/`transformers` bars and a few warnings that say
nothing actionable to a user (a deprecated attribute peft reads, bitsandbytes' optional `kernels`
package) are switched off. Set PEFT_APPS_VERBOSE=1 to see everything.
"""

from __future__ import annotations

import logging
import os
import warnings

_DONE = False


def quiet() -> None:
    global _DONE
    if _DONE or os.environ.get("PEFT_APPS_VERBOSE"):
        return
    _DONE = True
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*")
    warnings.filterwarnings("ignore", message=r".*`kernels`.*")
    # a library calls the old name of activation checkpointing on our behalf; nothing for a user to change
    warnings.filterwarnings("ignore", message=r".*gradient_checkpointing_enable.* is deprecated.*")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"peft\..*")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass
