"""The built wheel installs the `peft_apps` namespace only, with its prompts, data and recipes."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(out), str(ROOT)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return next(out.glob("peft_apps-*.whl"))


def test_wheel_has_one_namespace_and_package_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("peft_apps-")}
    assert tops == {"peft_apps"}, tops
    for needed in ("peft_apps/prompts/sft/entity_type.j2", "peft_apps/apps/sft/recipes/demo.yaml",
                   "peft_apps/data/sft/entity_types.jsonl", "peft_apps/core/cli/__init__.py", "peft_apps/core/cli/train.py",
                   "peft_apps/apps/autore/metrics/docred.py", "peft_apps/apps/sft/metrics/classification.py",
                   "peft_apps/apps/codereview/metrics/codereview.py", "peft_apps/prompts/codereview/comment.j2",
                   "peft_apps/data/codereview/itsdangerous-0e255fc.diff", "peft_apps/data/codereview/cls-test.jsonl",
                   "peft_apps/apps/testgen/_runner.py", "peft_apps/apps/testgen/metrics/codebleu/keywords/java.txt",
                   "peft_apps/apps/testgen/metrics/codebleu/parser/DFG.py", "peft_apps/prompts/testgen/python.j2",
                   "peft_apps/data/testgen/textkit/textkit/slug.py", "peft_apps/data/testgen/textkit/tests/test_slug.py",
                   "peft_apps/data/testgen/textkit/pyproject.toml", "peft_apps/core/engine/decode_attention.c"):
        assert needed in names, needed
    assert not any(n.startswith("peft_apps/tests/") or n.endswith("setup.py") for n in names)


def test_installed_wheel_imports_and_finds_prompts(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheel)], check=True)
    code = ("import peft_apps, sys; from peft_apps.core import get_app; from peft_apps.core.prompts import render; "
            "a = get_app('sft'); assert str(a.recipes()['demo']).startswith(sys.argv[1]), a.recipes(); "
            "print(render('sft', 'entity_type', entity='Rome', sentence='Rome .')); print(peft_apps.__file__)")
    env = {**os.environ, "PYTHONPATH": str(target)}
    p = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, env=env,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "Entity: Rome" in p.stdout and str(target) in p.stdout
