"""The CLI as a user meets it: help, errors without tracebacks, the demo (the README's own commands run in
test_readme_commands)."""

import json
import os
import subprocess
import sys

import pytest

from helpers import synthetic
from helpers.preloaded import run_cli


def run(*args, check=True, env=None):
    """`peft-apps ARGS`; with `env` (read at import time by the hub libraries) in a fresh interpreter."""
    if env is None:
        p = run_cli(["peft-apps", *args])
    else:
        p = subprocess.run([sys.executable, "-m", "peft_apps.core.cli", *args], capture_output=True, text=True,
                           env={**os.environ, **env, "COLUMNS": "200"}, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(p.stdout + p.stderr)
    return p


def test_help_does_not_import_torch():
    code = ("import sys; from peft_apps.core.cli import main; rc = main(['--help']); "
            "assert rc == 0, rc; assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "train" in p.stdout and "tiny-model" in p.stdout


@pytest.mark.parametrize("args, needle", [
    (["train", "nope"], "unknown app 'nope'"),
    (["train", "sft", "peft.rr=3"], "unknown recipe key 'peft.rr'"),
    (["train", "sft", "-r", "missing"], "no recipe 'missing'"),
    (["eval", "sft", "--adapter", "/nonexistent"], "not an adapter folder"),
    (["score", "sft", "--gold", "/nonexistent.jsonl", "--pred", "/nonexistent.jsonl"], "not found"),
])
def test_user_errors_are_one_message_no_traceback(args, needle):
    p = run(*args, check=False)
    assert p.returncode == 2, p.stdout + p.stderr
    assert needle in p.stderr and "Traceback" not in p.stderr


def test_apps_lists_recipes():
    p = run("apps")
    assert "sft" in p.stdout and "demo" in p.stdout and "lora" in p.stdout


def test_score_sft_with_hand_computed_numbers(tmp_path):
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps({"id": i, "completion": c}) + "\n" for i, c in
                            enumerate(["LOC", "PER", "LOC", "ORG"])))
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps({"id": i, "output": o}) + "\n" for i, o in
                            enumerate([" loc.", "PER", "ORG", "ORG"])))
    out = tmp_path / "m.json"
    run("score", "sft", "--gold", str(gold), "--pred", str(pred), "-o", str(out))
    m = json.loads(out.read_text())
    assert m["exact_match"] == pytest.approx(0.75)
    assert m["per_class"]["loc"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["org"]["precision"] == pytest.approx(0.5)
    pred.write_text('{"id": 9, "output": "x"}\n')
    p = run("score", "sft", "--gold", str(gold), "--pred", str(pred), check=False)
    assert p.returncode == 2 and "no prediction id is a record id of" in p.stderr and "9" in p.stderr


def test_offline_hub_model_not_cached_is_one_clear_error(tmp_path):
    data = synthetic.write(tmp_path / "d.jsonl", synthetic.make(4, 0))
    p = run("train", "sft", f"data.train={data}", "model.base=peft-apps-test/no-such-model",
            check=False, env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert p.returncode == 2, p.stderr[-2000:]
    assert "peft-apps-test/no-such-model" in p.stderr and "model.base=DIR" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.slow
def test_demo_learns_and_its_next_commands_run(tmp_path):
    """`peft-apps demo` (the README's first command): the adapter beats the majority answer and the base
    model on held-out records, and the commands its "next:" line suggests run as written."""
    out = tmp_path / "demo"
    p = run("demo", "-o", str(out))
    assert "majority answer" in p.stdout and "after training" in p.stdout
    em = json.loads((out / "eval_metrics.json").read_text())
    base = em["baselines"]
    assert em["exact_match"] >= 1.5 * base["majority_answer"]["exact_match"] > 0
    assert em["exact_match"] > base["before_training"]["exact_match"] + 0.2
    hint = next(line for line in p.stderr.splitlines() if line.startswith("next: "))
    for command in hint.removeprefix("next: ").split("  |  "):
        words = command.split()
        assert words[0] == "peft-apps"
        q = run(*words[1:])
        assert q.returncode == 0


def test_importing_the_package_keeps_bitsandbytes_quiet():
    """bitsandbytes logs a line about an optional package on import (where the CPU has AVX-512 BF16); the
    Python API and every command are quiet about it unless PEFT_APPS_VERBOSE=1."""
    code = "import peft_apps.apps.testgen, bitsandbytes, logging; print(logging.getLogger('bitsandbytes').level)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert "gemm_4bit" not in p.stderr and p.stdout.strip() == "40", p.stderr[-2000:]
