"""peft-apps: turn open LLMs into task specialists with parameter-efficient fine-tuning.

The installed namespace maps the repository folders: ``peft_apps.core`` (training core, inference
engine, recipes, CLI), ``peft_apps.apps.<app>`` (one package per task), ``peft_apps.eval``
(metrics and benchmarks). ``prompts/`` and ``data/`` ship as package data.
"""

__version__ = "0.1.0"

import logging as _logging
import os as _os

if not _os.environ.get("PEFT_APPS_VERBOSE"):
    # bitsandbytes logs, on every import without the optional `kernels` package, that its CPU 4-bit kernel
    # could not load (it falls back to its own): nothing a user of this package can act on. Python users of
    # the pipelines import it through us too, so this is set here rather than in the CLI alone.
    _logging.getLogger("bitsandbytes").setLevel(_logging.ERROR)
