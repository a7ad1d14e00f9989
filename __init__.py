"""peft-apps: turn open LLMs into task specialists with parameter-efficient fine-tuning.

The installed namespace maps the repository folders: ``peft_apps.core`` (training core, inference
engine, recipes, CLI), ``peft_apps.apps.<app>`` (one package per task), ``peft_apps.eval``
(metrics and benchmarks). ``prompts/`` and ``data/`` ship as package data.
"""

__version__ = "0.1.0"
