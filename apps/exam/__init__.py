"""exam: chain-of-thought tuning on exam questions (ZNO, Ukrainian): converters for ZNO-Eval and UNLP
2024 files, answer-only / CoT / topic-led CoT targets, robust answer extraction, exam scoring with
partial credit, and self-consistency (a vote over k sampled answers).

    from peft_apps.apps.exam import ExamSolver
    solver = ExamSolver.from_pretrained(None, "runs/exam-qlora")
    [(s.id, s.answer) for s in solver.solve("questions.jsonl", samples=8)]
"""

from pathlib import Path

from peft_apps.core.registry import register_app
from peft_apps.core.resources import data_dir, prompts_dir

from .app import TARGETS, ExamApp, ExamTask

app = register_app(ExamApp(
    name="exam",
    serve_action="answer",
    summary="exam questions (ZNO, UNLP 2024): CoT targets, answer extraction, exam points, self-consistency",
    package_dir=Path(__file__).parent,
    prompts=prompts_dir("exam"),
    data=data_dir("exam"),
    default_recipe="qlora",
    task_schema=ExamTask,
    metric="exam.py",
    headline=("points_share", "accuracy", "unparsed"),
    subtasks=TARGETS,
    subtask_key="target",
))


def __getattr__(name):  # the pipeline imports torch: load it on first use only
    if name == "ExamSolver":
        from .pipeline import ExamSolver

        return ExamSolver
    raise AttributeError(name)


__all__ = ["ExamSolver", "app"]
