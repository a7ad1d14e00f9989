import pytest

from peft_apps.core import UserError, get_app, list_apps
from peft_apps.core.config import Recipe, load_recipe, parse_override, validate_recipe


def test_every_bundled_recipe_validates():
    apps = list_apps()
    assert "sft" in apps
    for name, a in apps.items():
        assert a.recipes(), f"app {name} has no recipe"
        for rname, path in a.recipes().items():
            r = load_recipe(path, app=name)
            assert r.app == name and r.name == rname


def test_overrides_set_nested_typed_values(sft_app):
    r = load_recipe(sft_app.recipe_path("lora"), ["train.lr=1e-4", "peft.r=4", "peft.target_modules=[q_proj,v_proj]",
                                                  "train.batching=random", "task.completion_field=label"])
    assert r.train.lr == pytest.approx(1e-4)
    assert r.peft.r == 4 and r.peft.target_modules == ["q_proj", "v_proj"]
    assert r.train.batching == "random" and r.task == {"completion_field": "label"}


@pytest.mark.parametrize("override, needles", [
    ("peft.rr=3", ["peft.rr", "alpha", "target_modules"]),
    ("trian.lr=3", ["trian", "train", "model"]),
    ("train.batching=foo", ["train.batching", "group_by_length", "packing"]),
    ("peft.method=lorax", ["lorax", "qlora", "adalora", "prompt_tuning"]),
    ("train.lr=abc", ["train.lr", "abc"]),
    ("model.quantization=nf5", ["nf4", "int8", "none"]),
])
def test_bad_override_names_key_and_choices(sft_app, override, needles):
    with pytest.raises(UserError) as ei:
        load_recipe(sft_app.recipe_path("lora"), [override])
    msg = str(ei.value)
    for n in needles:
        assert n in msg, (n, msg)


def test_override_syntax_and_unknown_recipe(sft_app):
    with pytest.raises(UserError, match="key=value"):
        parse_override("train.lr")
    with pytest.raises(UserError, match="no recipe 'nope'.*|lora"):
        sft_app.recipe_path("nope")


def test_unknown_key_in_yaml_file(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("app: sft\ntrain:\n  learning_rate: 1\n")
    with pytest.raises(UserError) as ei:
        load_recipe(p)
    assert "train.learning_rate" in str(ei.value) and "lr" in str(ei.value) and str(p) in str(ei.value)


def test_task_section_checked_by_app(sft_app):
    r = validate_recipe({"app": "sft", "task": {"completion_fieldx": "y"}})
    with pytest.raises(UserError, match="task.completion_fieldx.*completion_field"):
        sft_app.task(r)


def test_unknown_app():
    with pytest.raises(UserError, match="unknown app 'nope'"):
        get_app("nope")


def test_output_dir_placeholders():
    r = Recipe(app="sft", name="lora")
    assert str(r.output_dir()) == "runs/sft-lora"


def test_run_recipe_parses_a_run_folders_recipe_again_only_when_it_changes(tmp_path, sft_app):
    import os

    from peft_apps.core import config
    from peft_apps.core.config import run_recipe

    (tmp_path / "adapter_config.json").write_text("{}")
    f = tmp_path / "recipe.yaml"
    f.write_text(load_recipe(sft_app.recipe_path("lora"), ["train.lr=1e-4"]).to_yaml())
    first = run_recipe(tmp_path, "sft")
    parsed = []
    real = config.load_recipe
    config.load_recipe = lambda *a, **k: parsed.append(a) or real(*a, **k)
    try:
        again = run_recipe(tmp_path, "sft")
        assert not parsed and again == first and again is not first  # unchanged: not parsed; a copy each
        again.train.lr = 5.0
        assert run_recipe(tmp_path, "sft").train.lr == pytest.approx(1e-4)  # a caller's change stays its own
        f.write_text(f.read_text().replace("0.0001", "0.0002"))
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
        assert run_recipe(tmp_path, "sft").train.lr == pytest.approx(2e-4) and len(parsed) == 1  # edited: read again
        with pytest.raises(UserError, match="sft"):
            run_recipe(tmp_path, "codereview")  # a run of another app, cached or not
    finally:
        config.load_recipe = real
