"""codereview: LLaMA-Reviewer's three code review tasks on CodeReviewer data.

Review necessity (does a diff hunk need a comment?), review comment generation, and code refinement
(revise the code as a reviewer's comment asks), trained with LoRA or prefix tuning, one adapter per
task or one for all. `peft-apps codereview review` reviews a real `git diff` for people (markdown) and CI
(JSON, reviewdog's rdjsonl, SARIF).

    from peft_apps.apps.codereview import CodeReviewer
    reviewer = CodeReviewer.from_pretrained(None, "runs/codereview-lora")
    for c in reviewer.review(open("change.diff").read()).comments:
        print(c.path, c.start_line, c.comment)
"""

from pathlib import Path

from peft_apps.core.registry import register_app
from peft_apps.core.resources import data_dir, prompts_dir

from .app import CodeReviewApp, CodeReviewTask
from .data import TASKS


def _cli():
    from .cli import cli

    return cli


app = register_app(CodeReviewApp(
    name="codereview",
    serve_action="review",
    summary="code review (LLaMA-Reviewer): review necessity, comment generation, code refinement; reviews git diffs",
    package_dir=Path(__file__).parent,
    prompts=prompts_dir("codereview"),
    data=data_dir("codereview"),
    default_recipe="lora",
    task_schema=CodeReviewTask,
    metric="codereview.py",
    headline=("f1", "bleu4", "exact_match"),
    subtasks=TASKS,
    cli=_cli,
))


def __getattr__(name):  # the pipeline imports torch: load it on first use only
    if name == "CodeReviewer":
        from .pipeline import CodeReviewer

        return CodeReviewer
    raise AttributeError(name)


__all__ = ["CodeReviewer", "app"]
