"""autore: document-level relation extraction with AutoRE's RHF paradigm (Relation -> Head -> Facts).

    from peft_apps.apps.autore import AutoRE
    re = AutoRE.from_pretrained(None, "runs/autore-qlora")
    re.extract("Marie Curie was born in Warsaw in 1867 .").triples

CLI: `autore extract doc.txt`, `autore train`, `autore eval`; and through `peft-apps`:
`peft-apps train|eval|predict|convert|score autore`.
"""

from pathlib import Path

from peft_apps.core.registry import register_app
from peft_apps.core.resources import data_dir, prompts_dir

from .app import AutoREApp, AutoRETask

app = register_app(AutoREApp(
    name="autore",
    serve_action="extract",
    summary="document-level relation extraction, AutoRE's Relation -> Head -> Facts on (Re-)DocRED",
    package_dir=Path(__file__).parent,
    prompts=prompts_dir("autore"),
    data=data_dir("autore"),
    default_recipe="qlora",
    task_schema=AutoRETask,
    metric="docred.py",
    headline=("f1", "precision", "recall", "docred_re_f1"),
))


def __getattr__(name):  # the pipeline imports torch: load it on first use only
    if name in ("AutoRE", "DocResult"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)


__all__ = ["AutoRE", "DocResult", "app"]
