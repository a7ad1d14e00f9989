"""testgen: unit-test generation with PEFT (LoRA, (IA)^3, prompt tuning), checked by running the tests.

Trained on methods2test (Java: focal method -> test) or on pairs mined from any Python repository with
pytest tests; scored by syntactic validity and CodeBLEU, and for Python by pass rate and coverage from
running each generated test in a bubblewrap sandbox. In CI, `peft-apps testgen generate` writes tests
for changed functions and keeps only those that pass and add coverage.

    from peft_apps.apps.testgen import TestGenerator
    gen = TestGenerator.from_pretrained(None, "runs/testgen-lora")
    result = gen.generate(project=".", paths=["textkit/stats.py::reading_time"])
    for f in result.functions:
        print(f.target, [c.verdict.reason for c in f.candidates])
"""

from pathlib import Path

from peft_apps.core.registry import register_app
from peft_apps.core.resources import data_dir, prompts_dir

from .app import TestGenApp, TestGenTask


def _cli():
    from .cli import cli

    return cli


app = register_app(TestGenApp(
    name="testgen",
    serve_action="generate",
    summary="unit-test generation (methods2test, mined Python pairs); generated tests checked in a sandbox",
    package_dir=Path(__file__).parent,
    prompts=prompts_dir("testgen"),
    data=data_dir("testgen"),
    default_recipe="lora",
    task_schema=TestGenTask,
    metric="testgen.py",
    headline=("codebleu", "syntax_validity", "pass_rate"),
    cli=_cli,
))


def __getattr__(name):  # the pipeline imports torch: load it on first use only
    if name == "TestGenerator":
        from .pipeline import TestGenerator

        return TestGenerator
    raise AttributeError(name)


__all__ = ["TestGenerator", "app"]
