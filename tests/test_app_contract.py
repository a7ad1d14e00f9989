"""The app contract, checked for every registered app (a new app is covered by registering it; the
README's walk-through app `tests/helpers/toy_app` is registered by conftest), and the registration
checks that stop a broken app before a user meets it."""

import json
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


@pytest.mark.parametrize("name", APPS)
def test_declarations(name):
    """Headline metrics, a metric module `evaluate` can load by path, a parse that never raises."""
    from collections import Counter

    from peft_apps.core.config import load_recipe
    from peft_apps.core.loop import examples

    a = list_apps()[name]
    assert a.headline and a.metric_path is not None and a.metric_path.is_file()
    assert a.load_metric().name  # an evaluate module, loaded offline by path
    r = load_recipe(a.recipe_path("demo" if "demo" in a.recipes() else None), app=name)
    ex = examples(a, r, "eval")[:1]
    assert ex, "the demo recipe holds out eval examples"
    stats = Counter()
    for text in ["", "\x00garbage | | |\n\n", "x" * 5000, ex[0].completion]:
        a.parse(text, ex[0], a.task(r), stats)  # never raises
    assert all(v > 0 for v in stats.values())


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in APPS if "demo" in list_apps()[n].recipes()])
def test_score_reads_back_what_eval_and_predict_wrote(name, tmp_path):
    """An adapter trained one step on the demo recipe; `eval` writes its predictions, `score` reads them
    back to the same metrics without a model; `predict` rows carry id, output and parsed."""
    from peft_apps.core import loop
    from peft_apps.core.config import load_recipe
    from peft_apps.core.trainer import train

    a = list_apps()[name]
    r = load_recipe(a.recipe_path("demo"), [f"train.output_dir={tmp_path / 'run'}", "train.max_steps=1",
                                            "data.limit_train=4", "eval.limit=3", "eval.max_new_tokens=12",
                                            "train.report_to=[]"], app=name)
    res = train(r, a.training_records(r, "train"))
    metrics = loop.evaluate(a, str(res.output_dir), r, "eval", tmp_path)
    rows = [json.loads(x) for x in (tmp_path / loop.PREDICTIONS).read_text().splitlines()]
    assert len(rows) == metrics["n"] == min(3, len(loop.examples(a, r, "eval")))
    assert all({"id", "output", "parsed"} <= set(x) for x in rows)
    from peft_apps.core.resources import bundled_or_path

    gold = bundled_or_path(r.data.eval or r.data.train)  # the demo holds out part of its training file
    scored = a.score(gold, tmp_path / loop.PREDICTIONS, r, only_predicted=True)
    assert scored["missing_predictions"] == 0 and scored["n"] == metrics["n"]
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            assert scored[k] == pytest.approx(v), k
    assert scored.get("parse_counts") == metrics.get("parse_counts")
    whole = a.score(gold, tmp_path / loop.PREDICTIONS, r)  # every gold example: the rest count as empty outputs
    assert whole["missing_predictions"] == whole["n"] - metrics["n"] > 0
    inputs = a.demo_inputs(r, tmp_path)
    if inputs:
        pred = loop.predict(a, str(res.output_dir), inputs, r)
        assert pred and all({"id", "output", "parsed"} <= set(x) for x in pred)


def test_registering_imports_no_torch():
    code = ("import sys; from peft_apps.core.registry import list_apps; list_apps(); "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ---- registration checks, on toy apps in a temporary folder ---------------------------------------


class _Task(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label_field: str = "label"


class _Toy(App):
    def read(self, path, recipe, labelled=True, prompts=True):
        return []


def _toy(tmp_path: Path, recipe: str = "app: broken\ndata: {template: ask}\n", template: bool = True, **kw) -> App:
    pkg = tmp_path / "toy"
    (pkg / "recipes").mkdir(parents=True, exist_ok=True)
    (pkg / "prompts").mkdir(exist_ok=True)
    if recipe is not None:
        (pkg / "recipes" / "lora.yaml").write_text(recipe)
    if template:
        (pkg / "prompts" / "ask.j2").write_text("Question: {{ question }}")
    return _Toy(**{"name": "broken", "summary": "a broken app", "package_dir": pkg, "prompts": pkg / "prompts",
                  "task_schema": _Task, **kw})


@pytest.fixture()
def registry(monkeypatch):
    from peft_apps.core import registry

    monkeypatch.setattr(registry, "_APPS", dict(registry._APPS))
    return registry


def test_a_toy_app_from_another_folder_registers_and_its_templates_resolve(registry, tmp_path):
    from peft_apps.core.prompts import render

    registry.register_app(_toy(tmp_path, "app: broken\ndata: {template: ask}\ntask: {label_field: y}\n"))
    assert render("broken", "ask", question="why?") == "Question: why?"  # from the app's own prompts folder


@pytest.mark.parametrize("case,kw,match", [
    ("bad name", {"name": "Toy App"}, "invalid app name"),
    ("no recipes", {"recipe": None}, "has no recipes"),
    ("default missing", {"default_recipe": "qlora"}, "default_recipe 'qlora' is not among"),
    ("bad key", {"recipe": "app: broken\ntrain: {lr: fast}\n"}, "(?s)recipe 'lora'.*train.lr"),
    ("bad task", {"recipe": "app: broken\ntask: {labels: y}\n"}, "(?s)recipe 'lora'.*task.labels"),
    ("other app", {"recipe": "app: sft\n"}, "it says app: sft"),
    ("no template", {"template": False}, "names template 'ask'"),
])
def test_broken_apps_are_refused_at_registration(registry, tmp_path, case, kw, match):
    recipe = kw.pop("recipe", "app: broken\ndata: {template: ask}\n")
    template = kw.pop("template", True)
    with pytest.raises(ValueError, match=match):
        registry.register_app(_toy(tmp_path, recipe, template, **kw))


def test_an_app_name_cannot_be_taken_twice(registry, tmp_path):
    registry.register_app(_toy(tmp_path / "a"))
    registry.register_app(_toy(tmp_path / "a"))  # the same app again (a reload): fine
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_app(_toy(tmp_path / "b"))
