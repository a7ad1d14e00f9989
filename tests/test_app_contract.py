"""The app contract, checked for every registered app (a new app is covered by registering it), and the
registration checks that stop a broken app before a user meets it."""

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from peft_apps.core.registry import App, list_apps

APPS = sorted(list_apps())


@pytest.mark.parametrize("name", APPS)
def test_recipes_validate_with_their_task_settings(name):
    from peft_apps.core.config import load_recipe

    a = list_apps()[name]
    assert a.default_recipe in a.recipes()
    for path in a.recipes().values():
        r = load_recipe(path, app=name)
        assert r.app == name
        a.task(r)  # raises on a bad task: section


@pytest.mark.parametrize("name", APPS)
def test_demo_records_render_through_the_templates(name):
    """The demo recipe's records come out of the app's own templates, non-empty, ids unique."""
    from peft_apps.core.config import load_recipe

    a = list_apps()[name]
    if "demo" not in a.recipes():
        pytest.skip("no demo recipe")
    r = load_recipe(a.recipe_path("demo"), app=name)
    recs = a.training_records(r, "train")
    assert recs and all(x.prompt and x.prompt[-1]["content"].strip() for x in recs)
    assert len({x.id for x in recs}) == len(recs)


@pytest.mark.parametrize("name", APPS)
def test_cli_knows_the_app(name, capsys):
    from peft_apps.core.cli import main

    assert main(["train", name, "--print-recipe"]) == 0
    assert f"app: {name}" in capsys.readouterr().out
    if list_apps()[name].cli is not None:
        assert main([name, "--help"]) == 0


def test_registering_imports_no_torch():
    code = ("import sys; from peft_apps.core.registry import list_apps; list_apps(); "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ---- registration checks, on toy apps in a temporary folder ---------------------------------------


class _Task(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label_field: str = "label"


def _toy(tmp_path: Path, recipe: str = "app: toy\ndata: {template: ask}\n", template: bool = True, **kw) -> App:
    pkg = tmp_path / "toy"
    (pkg / "recipes").mkdir(parents=True, exist_ok=True)
    (pkg / "prompts").mkdir(exist_ok=True)
    if recipe is not None:
        (pkg / "recipes" / "lora.yaml").write_text(recipe)
    if template:
        (pkg / "prompts" / "ask.j2").write_text("Question: {{ question }}")
    return App(**{"name": "toy", "summary": "a toy app", "package_dir": pkg, "prompts": pkg / "prompts",
                  "task_schema": _Task, **kw})


@pytest.fixture()
def registry(monkeypatch):
    from peft_apps.core import registry

    monkeypatch.setattr(registry, "_APPS", dict(registry._APPS))
    return registry


def test_a_toy_app_from_another_folder_registers_and_its_templates_resolve(registry, tmp_path):
    from peft_apps.core.prompts import render

    registry.register_app(_toy(tmp_path, "app: toy\ndata: {template: ask}\ntask: {label_field: y}\n"))
    assert render("toy", "ask", question="why?") == "Question: why?"  # from the app's own prompts folder


@pytest.mark.parametrize("case,kw,match", [
    ("bad name", {"name": "Toy App"}, "invalid app name"),
    ("no recipes", {"recipe": None}, "has no recipes"),
    ("default missing", {"default_recipe": "qlora"}, "default_recipe 'qlora' is not among"),
    ("bad key", {"recipe": "app: toy\ntrain: {lr: fast}\n"}, "(?s)recipe 'lora'.*train.lr"),
    ("bad task", {"recipe": "app: toy\ntask: {labels: y}\n"}, "(?s)recipe 'lora'.*task.labels"),
    ("other app", {"recipe": "app: sft\n"}, "it says app: sft"),
    ("no template", {"template": False}, "names template 'ask'"),
])
def test_broken_apps_are_refused_at_registration(registry, tmp_path, case, kw, match):
    recipe = kw.pop("recipe", "app: toy\ndata: {template: ask}\n")
    template = kw.pop("template", True)
    with pytest.raises(ValueError, match=match):
        registry.register_app(_toy(tmp_path, recipe, template, **kw))


def test_an_app_name_cannot_be_taken_twice(registry, tmp_path):
    registry.register_app(_toy(tmp_path / "a"))
    registry.register_app(_toy(tmp_path / "a"))  # the same app again (a reload): fine
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_app(_toy(tmp_path / "b"))
