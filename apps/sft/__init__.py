"""sft: supervised fine-tuning on your own JSONL, rendered through a prompt template.

Each line of the data file is an object; the recipe's `data.template` (a file in prompts/sft/ or a
path) turns its fields into the user prompt, and `task.completion_field` names the answer. The default
template is `{{ prompt }}`, so a plain {"prompt", "completion"} file works as is.

    from peft_apps.apps.sft import SFTPipeline
    pipe = SFTPipeline.from_pretrained("builtin:tiny", "runs/sft-demo")
    pipe([{"entity": "Paris", "sentence": "Paris is in France ."}], template="entity_type")
"""

from pathlib import Path

from peft_apps.core.registry import register_app
from peft_apps.core.resources import data_dir, prompts_dir

from .app import SFTApp, SFTTask

app = register_app(SFTApp(
    name="sft",
    summary="supervised fine-tuning on any JSONL through a prompt template (demo: entity typing on Re-DocRED)",
    package_dir=Path(__file__).parent,
    prompts=prompts_dir("sft"),
    data=data_dir("sft"),
    default_recipe="lora",
    task_schema=SFTTask,
    metric="classification.py",
    headline=("exact_match", "macro_f1"),
    quickstart=True,
))


def __getattr__(name):  # the pipeline imports torch: load it on first use only
    if name == "SFTPipeline":
        from .pipeline import SFTPipeline

        return SFTPipeline
    raise AttributeError(name)


__all__ = ["SFTPipeline", "app"]
