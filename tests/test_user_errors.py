"""Every command fails in one clear line (file, line or byte, field, hint; exit 2; no traceback), checks its
output path before any work, warns about what it cannot use (`--strict`: errors), and stops training
cleanly on Ctrl-C. Real files, real commands."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import synthetic
from helpers.preloaded import run_cli
from peft_apps.core.resources import data_dir

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "autore" / "redocred_dev_sample.json"


def cli(*args, module="peft_apps.core.cli", stdin=None):
    return run_cli([{"peft_apps.core.cli": "peft-apps", "peft_apps.apps.autore.cli": "autore"}[module], *args],
                   input=stdin)


def one_clear_error(p, *needles):
    assert p.returncode == 2, (p.returncode, p.stderr[-3000:])
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    for n in needles:
        assert n in p.stderr, (n, p.stderr[-3000:])


def fake_adapter(folder: Path, app: str, task: str = "") -> Path:
    """An adapter folder as far as the CLI's checks go (no weights: any model load would fail)."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "recipe.yaml").write_text(f"app: {app}\n" + (f"task: {task}\n" if task else ""))
    return folder


def test_invalid_utf8_is_named_with_its_byte_offset(tmp_path):
    gold = tmp_path / "gold.jsonl"
    gold.write_bytes(b'{"id": 0, "completion": "LOC"}\n{"id": 1, "completion": "caf\xe9"}\n')
    pred = tmp_path / "pred.jsonl"
    pred.write_text('{"id": 0, "output": "LOC"}\n')
    one_clear_error(cli("score", "sft", "--gold", str(gold), "--pred", str(pred)), f"{gold}: not UTF-8 text (line 2, byte 59",
                    "iconv")
    bad_docs = tmp_path / "docs.json"
    bad_docs.write_bytes(SAMPLE.read_bytes()[:100] + b"\xff" + SAMPLE.read_bytes()[100:])
    one_clear_error(cli("convert", "autore", str(bad_docs), "-o", str(tmp_path / "out")), "not UTF-8 text (line 1, byte 100")


def test_utf8_with_bom_is_read(tmp_path):
    gold = tmp_path / "gold.jsonl"
    gold.write_bytes(b"\xef\xbb\xbf" + b'{"id": 0, "completion": "LOC"}\n')
    pred = tmp_path / "pred.jsonl"
    pred.write_text('{"id": 0, "output": "loc"}\n')
    out = tmp_path / "m.json"
    p = cli("score", "sft", "--gold", str(gold), "--pred", str(pred), "-o", str(out))
    assert p.returncode == 0, p.stderr
    assert json.loads(out.read_text())["exact_match"] == 1.0


def test_convert_into_an_existing_file(tmp_path):
    target = tmp_path / "records"
    target.write_text("keep me")
    one_clear_error(cli("convert", "autore", str(SAMPLE), "-o", str(target)), "is a file")
    assert target.read_text() == "keep me"


def test_output_paths_are_checked_before_any_model_loads(tmp_path):
    adapter = fake_adapter(tmp_path / "adapter", "sft")
    out = tmp_path / "preds.jsonl"
    out.write_text("earlier results\n")
    t = time.perf_counter()
    one_clear_error(cli("predict", "sft", "--adapter", str(adapter), "hello", "-o", str(out)), "already exists",
                    "--force")
    assert out.read_text() == "earlier results\n" and time.perf_counter() - t < 60
    doc = tmp_path / "doc.txt"
    doc.write_text("Marie Curie was born in Warsaw .")
    one_clear_error(cli("extract", str(doc), "--adapter", str(adapter), "-o", "/proc/no/such/dir/x.jsonl",
                        module="peft_apps.apps.autore.cli"), "cannot")


def test_texts_in_legacy_encodings_empty_and_binary_inputs(tmp_path):
    adapter = tmp_path / "missing-adapter"
    latin = tmp_path / "latin.txt"
    latin.write_bytes("Jos\xe9 Mart\xed was born in Cuba .".encode("latin-1"))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    p = cli("extract", str(latin), str(empty), "--adapter", str(adapter), module="peft_apps.apps.autore.cli")
    assert "decoded as Latin-1" in p.stderr and "empty input" in p.stderr and "Traceback" not in p.stderr
    one_clear_error(p, "not an adapter folder")  # the inputs were read and warned about first
    one_clear_error(cli("extract", str(empty), "--strict", "--adapter", str(adapter),
                        module="peft_apps.apps.autore.cli"), "empty input", "--strict")
    binary = tmp_path / "image.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    one_clear_error(cli("extract", str(binary), "--adapter", str(adapter), module="peft_apps.apps.autore.cli"),
                    "a binary file")


def test_inputs_are_files_or_texts():
    from peft_apps.apps.autore.inputs import read_inputs
    from peft_apps.core import UserError

    items = read_inputs(["Marie Curie was born in Warsaw.", str(SAMPLE)])
    assert items[0] == ("text1", "Marie Curie was born in Warsaw.") and isinstance(items[1][1], dict)
    with pytest.raises(UserError, match="input not found: docs/missing.txt"):
        read_inputs(["docs/missing.txt"])


def test_an_adapter_of_another_app_is_one_clear_error_everywhere(tmp_path):
    """The same one-line message from every command and pipeline, before any model loads (the fake adapters
    hold no weights: a load would fail otherwise)."""
    sft = fake_adapter(tmp_path / "sft-run", "sft")
    exam = fake_adapter(tmp_path / "exam-run", "exam")
    review = fake_adapter(tmp_path / "cr-run", "codereview")
    diff = data_dir("codereview", "itsdangerous-0e255fc.diff")
    for p, run, trained, app in [
        (cli("predict", "autore", "--adapter", str(sft), "some text"), sft, "sft", "autore"),
        (cli("eval", "exam", "--adapter", str(sft)), sft, "sft", "exam"),
        (cli("codereview", "review", "--diff", str(diff), "--adapter", str(exam)), exam, "exam", "codereview"),
        (cli("extract", "Marie Curie was born in Warsaw.", "--adapter", str(exam), module="peft_apps.apps.autore.cli"),
         exam, "exam", "autore"),
        (cli("testgen", "generate", "--project", str(tmp_path), "x.py", "--adapter", str(review)), review,
         "codereview", "testgen"),
    ]:
        one_clear_error(p, f"adapter {run} was trained for app {trained!r}, not {app!r}")
    from peft_apps.apps.codereview import CodeReviewer
    from peft_apps.apps.exam import ExamSolver
    from peft_apps.apps.testgen import TestGenerator
    from peft_apps.core import UserError

    for cls, run, trained in ((CodeReviewer, exam, "exam"), (ExamSolver, review, "codereview"),
                              (TestGenerator, sft, "sft")):
        with pytest.raises(UserError, match=f"was trained for app '{trained}'"):
            cls.from_pretrained(None, str(run))


def test_an_adapter_without_the_task_a_command_needs_is_an_error(tmp_path):
    necessity = fake_adapter(tmp_path / "necessity", "codereview", "{task: necessity}")
    comment = fake_adapter(tmp_path / "comment", "codereview", "{task: comment}")
    diff = data_dir("codereview", "itsdangerous-0e255fc.diff")
    one_clear_error(cli("codereview", "review", "--diff", str(diff), "--adapter", str(necessity)),
                    "a review's comments needs an adapter trained for comment", f"{necessity} (necessity)",
                    "peft-apps train codereview --task comment")
    one_clear_error(cli("codereview", "review", "--diff", str(diff), "--adapters",
                        f"necessity={necessity},comment={comment}", "--suggest"),
                    "--suggest (refined code) needs an adapter trained for refine",
                    "peft-apps train codereview --task refine")
    one_clear_error(cli("codereview", "review", "--diff", str(diff), "--adapters",
                        f"necessity={comment},comment={comment}"),
                    f"--adapters necessity={comment}: that adapter was trained for comment, not necessity")
    relation = fake_adapter(tmp_path / "relation", "autore", "{stages: [relation]}")
    one_clear_error(cli("extract", "Marie Curie was born in Warsaw.", "--adapter", str(relation),
                        module="peft_apps.apps.autore.cli"),
                    "was trained for the relation stage(s); extraction needs head, facts", "qlora-relation")


def test_override_errors_say_they_came_from_the_command_line():
    p = cli("train", "sft", "train.lr=fast", "--print-recipe")
    one_clear_error(p, "train.lr", "(set on the command line)")
    one_clear_error(cli("train", "codereview", module="peft_apps.apps.autore.cli"),
                    "not of the form key=value", "already names it")


def test_unreachable_hub_fails_fast_and_names_offline_mode(tmp_path):
    data = synthetic.write(tmp_path / "d.jsonl", synthetic.make(4, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"), COLUMNS="200")
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "peft_apps.core.cli", "train", "sft", f"data.train={data}",
                        "model.base=peft-apps-test/no-such-model"], capture_output=True, text=True, env=env,
                       timeout=300)
    took = time.perf_counter() - t
    one_clear_error(p, "peft-apps-test/no-such-model", "HF_HUB_OFFLINE")
    assert took < 45, took  # the interpreter and imports included; the hub check itself is under a second


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(sft_app, tmp_path):
    from transformers import TrainerCallback

    from peft_apps.core.config import load_recipe
    from peft_apps.core.trainer import TrainingInterrupted, train

    class PressCtrlC(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGINT)

    tr = synthetic.write(tmp_path / "train.jsonl", synthetic.make(64, 1))
    r = load_recipe(sft_app.recipe_path("demo"), [f"data.train={tr}", "data.template=default",
                                                  "task.completion_field=completion", "train.max_steps=6",
                                                  "train.save_steps=100", "train.report_to=[]",
                                                  f"train.output_dir={tmp_path / 'run'}"])
    with pytest.raises(TrainingInterrupted) as stop:
        train(r, sft_app.training_records(r, "train"), extra_callbacks=[PressCtrlC()])
    assert stop.value.step == 2 and stop.value.checkpoint.name == "checkpoint-2"
    assert (stop.value.checkpoint / "adapter_model.safetensors").is_file()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    res = train(r, sft_app.training_records(r, "train"), resume=True)
    assert res.metrics["steps"] == 6 and res.metrics["resumed_from"].endswith("checkpoint-2")
    card = (tmp_path / "run" / "README.md").read_text()
    assert "| app | sft |" in card and "| base model | builtin:tiny |" in card and "More Information" not in card
    # plain peft loads the run: adapter_config names the base's own folder (the builtin name is in recipe.yaml)
    from peft import AutoPeftModelForCausalLM

    from peft_apps.core.tiny import builtin_model_path

    base = json.loads((tmp_path / "run" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str(builtin_model_path("tiny").resolve()) and "base: builtin:tiny" in (tmp_path / "run" / "recipe.yaml").read_text()
    assert AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "run")).peft_config["default"].r == r.peft.r


@pytest.mark.slow
def test_a_run_shorter_than_logging_steps_reports_its_loss(tmp_path):
    data = synthetic.write(tmp_path / "d.jsonl", synthetic.make(16, 0))
    p = cli("train", "sft", "-r", "demo", f"data.train={data}", "data.template=default",
            "task.completion_field=completion", "train.max_steps=2", "train.logging_steps=10",
            f"train.output_dir={tmp_path / 'run'}")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "nan" not in p.stderr and "train loss" in p.stderr


def test_a_missing_data_file_says_which_setting_named_it(tmp_path):
    p = cli("train", "autore", f"data.train={SAMPLE}")  # the qlora recipe names data.eval=dev_revised.json
    one_clear_error(p, "data.eval: file not found: dev_revised.json", "recipe 'qlora' sets data.eval",
                    "data.eval=PATH")
    p = cli("train", "sft", "data.train=nope.jsonl")  # the user's own setting is named as theirs
    one_clear_error(p, "data.train: file not found: nope.jsonl", "you set it on the command line")
    assert "recipe 'lora' sets" not in p.stderr
    p = cli("train", "sft", f"data.train={tmp_path}")
    one_clear_error(p, "data.train: a folder, not a file")


def test_a_folder_where_a_file_is_expected_is_named_so(tmp_path):
    p = cli("predict", "exam", "--adapter", str(fake_adapter(tmp_path / "run", "exam")), str(tmp_path))
    one_clear_error(p, f"{tmp_path} is a folder")
    assert "no options found" not in p.stderr
    p = cli("score", "sft", "--gold", str(tmp_path), "--pred", str(tmp_path))
    one_clear_error(p, "is a folder")
    p = cli("testgen", "generate", "--project", str(tmp_path), "--candidates", str(tmp_path))
    one_clear_error(p, "a folder; give the JSONL file")


def test_review_of_a_range_the_repository_lacks_says_so(tmp_path):
    import subprocess as sp

    sp.run(["git", "init", "-q", str(tmp_path)], check=True)
    for i in range(2):
        (tmp_path / "f.py").write_text(f"x = {i}\n")
        sp.run(["git", "-C", str(tmp_path), "add", "."], check=True)
        sp.run(["git", "-C", str(tmp_path), "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", f"c{i}"],
               check=True)
    p = cli("codereview", "review", "--git", "HEAD~9..HEAD", "--root", str(tmp_path), "--adapter",
            str(fake_adapter(tmp_path / "run", "codereview")))
    one_clear_error(p, "revision 'HEAD~9' does not exist in this repository (2 commit(s) on HEAD)")


def test_warnings_are_counted_in_the_output(tmp_path):
    """An empty input is predicted (nothing to extract) and warned about; the CLI sums the warnings up."""
    from helpers.autore_fixtures import random_adapter

    adapter = random_adapter(tmp_path / "adapter")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    p = cli("predict", "autore", "--adapter", str(adapter), str(empty), "Marie Curie was born in Warsaw .")
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    assert [r["id"] for r in rows] == [str(empty), "text1"] and rows[0]["parsed"] == []
    assert "empty input" in p.stderr and "1 warning (above)" in p.stderr


def test_candidates_name_their_own_targets(tmp_path):
    """`testgen generate --candidates FILE` with no paths: every line names its target, so that is what gets
    tested (before: "nothing to test")."""
    import shutil

    project = tmp_path / "textkit"
    shutil.copytree(data_dir("testgen", "textkit"), project)
    cands = tmp_path / "c.jsonl"
    cands.write_text(json.dumps({"target": "textkit/stats.py::reading_time",
                                 "test": "    assert reading_time('a b c', wpm=2) == 2\n"}) + "\n")
    out = tmp_path / "r.json"
    p = cli("testgen", "generate", "--project", str(project), "--candidates", str(cands), "-o", str(out))
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [f["target"] for f in report["functions"]] == ["textkit/stats.py::reading_time"]
    p = cli("testgen", "generate", "--project", str(project), "--candidates", str(cands), "-o", str(out))
    one_clear_error(p, "already exists", "--force")


def test_testgen_check_takes_one_file_then_overrides(tmp_path):
    test = tmp_path / "test_x.py"
    test.write_text("def test_x():\n    assert True\n")
    p = cli("testgen", "check", "--project", str(tmp_path), str(test), "other.py")
    one_clear_error(p, "'other.py' is not of the form key=value")
