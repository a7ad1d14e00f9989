"""Every command the README shows runs as written, in order, in a folder holding the files it names.

The README's commands are read from its ```bash blocks (lines starting with `peft-apps` or `autore`) and
its Python API blocks, so a command added to the README is run here or the test fails. What a fresh
clone on a CPU machine cannot have is stood in for, and only that:
- the files a command names (`my.jsonl`, `dev_revised.json`, `doc.txt`, ...) are made from the bundled
  samples under those names, in the format the README documents;
- hub models become `builtin:tiny` and training gets a budget (`train.max_steps=1`, `data.limit_train=2`, `data.limit_eval=2`,
  and `eval.max_new_tokens=16` saved with the adapter for the commands that use it), evaluation a limit
  (`eval.limit=2`): the same code paths, seconds instead of hours;
- a synopsis's placeholders (APP, RUN, GOLD, PRED, INPUT..., OUT) get values, `a|b|c` runs once per
  choice, `[...]` options are given and `[KEY=VALUE]...` is left out;
- a line whose comment says `error: MESSAGE` must fail with exit code 2 and that message;
- `peft-apps serve ... &` starts the server in the background (on a free port: `8000` in every command
  and Python block becomes that port) until the test ends; the commands after it use it.
Each command runs in a fork of one interpreter that imported the heavy libraries once (the console
script's own entry point, a process of its own: `helpers/preloaded.py`), which saves 5-7 s a command;
the installed console script itself runs once, as a shell runs it.
The lines in SKIP are not run here, each for the reason given.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

SKIP = {
    "pip install": "the install itself: CI runs it on a fresh machine before the tests",
    "python3 -m venv": "the install itself",
    "python -m pytest": "this is the test suite",
    "bash ../shared/gpu/bundle.sh": "packs wheels for the GPU machine; eval/gpu_check.py --smoke runs in test_scripts",
    "bash eval/gpu_check.sh": "needs a GPU; its code paths run with --smoke in test_scripts",
}
SKIP_EXACT = {"peft-apps demo": "test_cli's demo test runs it and the commands its next: line prints"}

PLACEHOLDERS = {
    "APP": "sft", "RUN": "runs/sft-lora", "GOLD": "my.jsonl", "PRED": "runs/sft-lora/eval_predictions.jsonl",
    "INPUT...": "hello", "OUT.json": "out.json", "R/": "runs/autore-qlora", "H/": "runs/autore-qlora",
    "F/": "runs/autore-qlora",
}
# `peft-apps demo --real` keeps its real model (SmolLM2, the `real` extra) and runs every step on a few records
REAL_DEMO_BUDGET = ["train.max_steps=2", "data.limit_train=8", "data.limit_eval=4", "train.eval_steps=null"]
TRAIN_BUDGET = ["model.base=builtin:tiny", "train.max_steps=1", "data.limit_train=2", "data.limit_eval=2",
                "eval.max_new_tokens=16"]


def readme_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def readme_commands() -> list[tuple[str, str]]:
    """(command, comment) for each command line of the README's bash blocks, in order (a background command
    keeps its trailing `&`)."""
    out = []
    for block in readme_blocks("bash"):
        for line in block.splitlines():
            command, _, comment = line.partition("  #")
            command = command.strip()
            if command:
                out.append((command, comment.strip()))
    return out


def skipped(command: str) -> bool:
    return command in SKIP_EXACT or command.startswith(tuple(SKIP))


def expand(command: str) -> list[list[str]]:
    """The argv lists a README line stands for: placeholders filled, `[...]` dropped, `a|b` expanded."""
    command = re.sub(r"\s*\[KEY=VALUE\]\.\.\.", "", command)
    command = re.sub(r"\[([^\]]*)\]", r"\1", command)
    words = shlex.split(command)
    words = [",".join(PLACEHOLDERS.get(p, p) for p in w.split(",")) if "=" in w and "," in w else PLACEHOLDERS.get(w, w)
             for w in words]
    words = [re.sub(r"=([RHF]/)", lambda m: "=" + PLACEHOLDERS[m.group(1)], w) for w in words]
    choices = [w.split("|") if "|" in w and not w.startswith(("{", "'")) else [w] for w in words]
    runs = [list(c) for c in itertools.product(*choices)]
    out = []
    for i, argv in enumerate(runs):
        argv = [f"out{i}.txt" if w == "OUT" else w for w in argv]
        if argv[0] == "peft-apps" and len(argv) > 1 and argv[1] == "train" and "--print-recipe" not in argv:
            argv = argv + TRAIN_BUDGET
        if argv[0] == "peft-apps" and len(argv) > 1 and argv[1] == "eval":
            argv = argv + ["eval.limit=2"]
        if argv[:2] == ["peft-apps", "demo"] and "--real" in argv:  # the real model, on a budget
            argv = argv + REAL_DEMO_BUDGET
        out.append(argv)
    return out


def workspace(tmp: Path) -> None:
    """The files the README's commands name, made from the bundled samples."""
    sample = ROOT / "data" / "autore" / "redocred_dev_sample.json"
    for name in ("dev_revised.json", "train_revised.json", "dev.json"):
        shutil.copy(sample, tmp / name)
    # sft's documented format: {"id", "prompt", "completion"}
    rows = [json.loads(x) for x in (ROOT / "data" / "sft" / "entity_types.jsonl").read_text().splitlines()[:40]]
    (tmp / "my.jsonl").write_text("".join(
        json.dumps({"id": r["id"], "prompt": f"Type of {r['entity']!r} in: {r['sentence']}", "completion": r["type"]})
        + "\n" for r in rows))
    # codereview: CodeReviewer's files under their own kind of names, and a real diff
    cr = ROOT / "data" / "codereview"
    shutil.copy(cr / "cls-test.jsonl", tmp / "cls-train.jsonl")
    shutil.copy(cr / "msg-test.jsonl", tmp / "msg-test.jsonl")
    (tmp / "all-train.jsonl").write_text((cr / "cls-test.jsonl").read_text() + (cr / "msg-test.jsonl").read_text())
    shutil.copy(cr / "itsdangerous-0e255fc.diff", tmp / "change.diff")
    msg = [json.loads(x) for x in (cr / "msg-test.jsonl").read_text().splitlines()]
    (tmp / "comments.jsonl").write_text("".join(json.dumps({"id": r["id"], "output": r["msg"]}) + "\n" for r in msg[:5]))
    # testgen: the sample project as a git repository whose last commit changes a function, the study's
    # outputs as predictions, and hand-written candidates
    tg = ROOT / "data" / "testgen"
    shutil.copytree(tg / "textkit", tmp / "textkit")
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q"], cwd=tmp / "textkit", check=True)
    subprocess.run(git + ["add", "-A"], cwd=tmp / "textkit", check=True)
    subprocess.run(git + ["commit", "-qm", "one"], cwd=tmp / "textkit", check=True)
    stats = tmp / "textkit" / "textkit" / "stats.py"
    stats.write_text(stats.read_text().replace("most_common(n)", "most_common(max(n, 0))"))
    subprocess.run(git + ["commit", "-qam", "two"], cwd=tmp / "textkit", check=True)
    shutil.copy(tg / "methods2test-sample.jsonl", tmp / "methods2test-sample.jsonl")
    m2t = [json.loads(x) for x in (tg / "methods2test-sample.jsonl").read_text().splitlines()]
    (tmp / "predictions.jsonl").write_text("".join(json.dumps({"id": r["id"], "output": r["prediction"]}) + "\n"
                                                   for r in m2t))
    (tmp / "candidates.jsonl").write_text(json.dumps({"target": "textkit/stats.py::reading_time", "test":
                                                      "    assert reading_time('a b c', wpm=2) == 2\n"}) + "\n")
    # exam: the bundled ZNO-Eval and UNLP files, a rationale file as a teacher model would write it, and
    # predictions in the {"id", "output"} form
    ex = ROOT / "data" / "exam"
    shutil.copy(ex / "zno-math.json", tmp / "zno-math.json")
    shutil.copy(ex / "unlp-sample.jsonl", tmp / "unlp-sample.jsonl")
    (tmp / "rationales.jsonl").write_text(json.dumps({"id": "0", "rationale": "15 · 20 + 3 · 50 + 800 = 1250 грн."},
                                                     ensure_ascii=False) + "\n")
    unlp = [json.loads(x) for x in (ex / "unlp-sample.jsonl").read_text().splitlines()]
    (tmp / "questions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in unlp[:2]))
    (tmp / "exam-pred.jsonl").write_text("".join(
        json.dumps({"id": i, "output": f"Міркування ...\nВідповідь: {r['correct_answers'][0] if i % 2 else 'Я'}"},
                   ensure_ascii=False) + "\n" for i, r in enumerate(unlp)))
    text = "Marie Curie was born in Warsaw . She worked in Paris with Pierre Curie ."
    (tmp / "doc.txt").write_text(text)
    (tmp / "more.txt").write_text("Willi Schneider is a German skeleton racer born in Mediaș .")
    (tmp / "docs").mkdir()
    (tmp / "docs" / "a.txt").write_text(text)


def before(argv: list[str], tmp: Path) -> None:
    """Files a command reads that an earlier README command made under another name."""
    if "pred.jsonl" in argv and not (tmp / "pred.jsonl").exists():
        # autore's predictions: what `peft-apps eval autore` wrote, the format `predict` and `extract -f jsonl` share
        shutil.copy(tmp / "runs" / "autore-qlora" / "eval_predictions.jsonl", tmp / "pred.jsonl")


def check(argv: list[str], p: subprocess.CompletedProcess, tmp: Path) -> None:
    """What a command made is what the README says it makes."""
    if "--endpoint" in argv and p.returncode == 0:
        # generated on the README's server: the same as in-process (greedy)
        from helpers.preloaded import run_cli

        at = argv.index("--endpoint")
        local = [*argv[:at], *argv[at + 2:]]
        if "-o" in local:
            local[local.index("-o") + 1] = "local-" + local[local.index("-o") + 1]
        q = run_cli(local, cwd=tmp)
        assert q.returncode == 0, q.stderr[-2000:]
        if "-o" in argv:
            a = json.loads((tmp / argv[argv.index("-o") + 1]).read_text())
            b = json.loads((tmp / local[local.index("-o") + 1]).read_text())
            if "hunks" in a:  # a review
                assert a["hunks"] == b["hunks"]
            else:  # testgen: each function's first candidate is the greedy one
                assert [f["candidates"][0]["test"] for f in a["functions"]] == \
                    [f["candidates"][0]["test"] for f in b["functions"]] and a["functions"]
        else:
            assert p.stdout == q.stdout and p.stdout.strip()
    if argv[:3] == ["peft-apps", "eval", "sft"]:
        run = tmp / "runs" / "sft-lora"
        em = json.loads((run / "eval_metrics.json").read_text())
        assert em["n"] == 2 and 0.0 <= em["exact_match"] <= 1.0
        assert (run / "eval_report.md").read_text().startswith("# sft evaluation")
        assert len((run / "eval_predictions.jsonl").read_text().splitlines()) == 2
    if argv[:2] == ["peft-apps", "demo"] and "--real" in argv:
        run = tmp / "runs" / "sft-demo-real"
        em = json.loads((run / "eval_metrics.json").read_text())
        assert em["n"] == 4 and "before_training" in em["baselines"], em
        assert "base_sha256: b179c9523d0e" in (run / "recipe.yaml").read_text()
        assert "before training" in p.stdout and "after training" in p.stdout
    if argv[:3] == ["peft-apps", "predict", "sft"]:
        rows = [json.loads(x) for x in p.stdout.splitlines() if x.strip()]
        assert len(rows) == 1 and set(rows[0]) == {"id", "output", "parsed"}
    if argv[:3] == ["peft-apps", "score", "sft"]:
        # what eval wrote, scored without a model, gives eval's numbers
        scored = json.loads((tmp / "out.json").read_text())
        em = json.loads((tmp / "runs" / "sft-lora" / "eval_metrics.json").read_text())
        assert scored["n"] == em["n"] and scored["exact_match"] == em["exact_match"]
    if argv[:2] == ["autore", "extract"] and "json" in argv:
        run = json.loads((tmp / "out1.txt").read_text())
        assert run["counts"]["documents"] == 3 and len(run["documents"]) == 3
    if argv[:3] == ["peft-apps", "codereview", "review"] and p.returncode == 0:
        out = tmp / argv[argv.index("-o") + 1]
        assert out.is_file() and (json.loads(out.read_text())["version"] == "2.1.0" if out.suffix == ".sarif" else True)
    if argv[:3] == ["peft-apps", "score", "codereview"]:
        assert "bleu4" in p.stdout
    if argv[:3] == ["peft-apps", "score", "testgen"]:
        assert "codebleu" in p.stdout and "syntax_validity" in p.stdout
    if argv[:3] == ["peft-apps", "testgen", "check"]:
        v = json.loads(p.stdout)
        assert v["status"] == "keep" and v["coverage_gain"]["lines"] > 0
    if argv[:3] == ["peft-apps", "testgen", "generate"] and "--patch" in argv:
        assert "+def test_reading_time_gen0():" in (tmp / "tests.patch").read_text()
    if argv[:3] == ["peft-apps", "eval", "testgen"]:
        em = json.loads((tmp / "runs" / "testgen-lora" / "eval_metrics.json").read_text())
        assert em["n"] == 2 and em["executed"] == 2 and 0 <= em["pass_rate"] <= 1
    if argv[:3] == ["peft-apps", "score", "exam"]:
        scores = json.loads((tmp / "exam-scores.json").read_text())
        assert scores["n"] == 40 and scores["points"] == 20 and scores["unparsed"] == 20  # every other answer right
    if argv[:3] == ["peft-apps", "eval", "exam"]:
        rows = [json.loads(x) for x in (tmp / "runs" / "exam-qlora-cot" / "eval_predictions.jsonl").read_text().splitlines()]
        assert rows and all(len(r["samples"]) == 3 for r in rows)
    if argv[:3] == ["peft-apps", "score", "autore"]:
        assert "f1" in p.stdout and ("ign_f1" in p.stdout) == any(a.startswith("task.train_file=") for a in argv)


def test_readme_lists_no_command_this_test_cannot_read():
    commands = [c for c, _ in readme_commands()]
    assert any(c.startswith("peft-apps train") for c in commands) and any(c.startswith("autore extract") for c in commands)
    for c in commands:
        assert skipped(c) or c.startswith(("peft-apps ", "autore ")), f"README command not covered: {c}"


def run_command(argv: list[str], tmp: Path, comment: str) -> subprocess.CompletedProcess:
    """One README command, its exit code and output checked against what the README says of it."""
    from helpers.preloaded import run_cli

    before(argv, tmp)
    t0 = time.perf_counter()
    p = run_cli(argv, cwd=tmp)
    print(f"{time.perf_counter() - t0:6.1f}s  {' '.join(argv)}")
    shown = " ".join(argv)
    if comment.startswith("error:"):
        message = comment.removeprefix("error:").split(";")[0].strip()
        assert p.returncode == 2, f"{shown}: expected exit 2, got {p.returncode}\n{p.stderr[-1500:]}"
        assert message in p.stderr and "Traceback" not in p.stderr, f"{shown}\n{p.stderr[-1500:]}"
    else:
        assert p.returncode == 0, f"{shown}: exit {p.returncode}\n{p.stdout[-1500:]}\n{p.stderr[-3000:]}"
    return p


def start_server(argv: list[str], tmp: Path, env: dict) -> subprocess.Popen:
    """A README `peft-apps serve ... &`: started with the console script's entry point, ready when /health answers."""
    from helpers.served_runs import start_server as launch

    return launch(argv[2:], tmp, tmp / "serve.log", env)


def free_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.mark.slow
def test_every_readme_command_runs_as_written(tmp_path):
    workspace(tmp_path)
    env = {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    port = free_port()
    servers: list[subprocess.Popen] = []
    try:
        readme_commands_and_blocks(tmp_path, env, port, servers)
    finally:
        for proc in servers:
            proc.send_signal(2)  # Ctrl-C: the requests in flight finish, then it exits 0
            assert proc.wait(60) == 0, (tmp_path / "serve.log").read_text()[-3000:]


def readme_commands_and_blocks(tmp_path: Path, env: dict, port: str, servers: list) -> None:
    from helpers.preloaded import ENTRY_POINTS

    bindir = Path(sys.executable).parent
    ran = []
    for command, comment in readme_commands():
        if skipped(command):
            continue
        command = command.replace("127.0.0.1:8000", f"127.0.0.1:{port}").replace("--port 8000", f"--port {port}")
        background = command.endswith("&")
        for argv in expand(command.rstrip("&").strip()):
            if background:
                servers.append(start_server(argv, tmp_path, env))
                continue
            p = run_command(argv, tmp_path, comment)
            ran.append(" ".join(argv))
            check(argv, p, tmp_path)
    # what the commands made is what the README says they make
    assert (tmp_path / "runs" / "sft-lora" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "merged-model" / "config.json").is_file()
    assert (tmp_path / "records" / "report.json").is_file()
    assert (tmp_path / "runs" / "autore-demo" / "eval_metrics.json").is_file()
    assert len(ran) >= 20

    # the Python API blocks, with the adapters they name made by the commands above
    shutil.copytree(tmp_path / "runs" / "sft-lora", tmp_path / "runs" / "a")
    shutil.copytree(tmp_path / "runs" / "sft-lora", tmp_path / "runs" / "b")
    # (the installed console script itself, as a shell runs it; the server runs the same entry points)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {k: ":".join(v) for k, v in ENTRY_POINTS.items()}
    p = subprocess.run([str(bindir / "peft-apps"), "train", "sft", "-r", "demo", *TRAIN_BUDGET],
                       cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    for block in readme_blocks("python"):
        if "from_pretrained" not in block and "openai.OpenAI" not in block:
            continue  # the walk-through app's listing: tests/helpers/toy_app is that code, run by the contract test
        block = block.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        q = subprocess.run([sys.executable, "-c", block.replace('"..."', '"Marie Curie was born in Warsaw ."')],
                           cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
        assert q.returncode == 0, f"{block}\n{q.stderr[-3000:]}"
