"""`peft-apps sweep APP -r RECIPE --methods lora,ia3,... [KEY=VALUE ...]`: which PEFT method for this task on
this machine.

Each method trains with the same recipe, data and budget (only `peft.method` changes), in its own process
(`peft-apps train`, then `peft-apps eval` on the eval split), so peak memory is that method's alone and a
method that fails or crashes leaves the others running. Per method the sweep records the app's headline
metric, trainable parameters (count and share), peak memory (RSS on the CPU, CUDA peak on a GPU), training
tokens/s, adapter size on disk, training and wall time; it writes sweep.json, sweep.md and sweep.png (the
metric against trainable parameters) after every method. Run again, it skips the methods that finished
(a failed or interrupted one trains again); `--force` starts over.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from peft_apps.core.errors import UserError
from peft_apps.core.io import atomic_write
from peft_apps.core.methods import METHODS, unknown_method_message

STATE = "sweep.json"


def parse_methods(text: str) -> list[str]:
    """`lora,ia3,...` -> names; every unknown one named in one message, with the nearest known name."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise UserError("--methods is empty", hint="e.g. --methods lora,ia3,prompt_tuning")
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise UserError("; ".join(unknown_method_message(m) for m in unknown),
                        hint="`peft-apps methods` lists them (README: PEFT methods)")
    dupes = sorted({m for m in names if names.count(m) > 1})
    if dupes:
        raise UserError(f"--methods names {', '.join(dupes)} more than once")
    return names


def _size(folder: Path) -> int:
    files = list(folder.glob("adapter_model*.safetensors")) or list(folder.glob("model*.safetensors"))
    return sum(f.stat().st_size for f in files)


def _error_line(log: Path) -> str:
    """The error a failed step printed (its `error:` line and hint), else its last line."""
    lines = [ln.rstrip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if ln.startswith("error:"):
            hint = lines[i + 1] if i + 1 < len(lines) and lines[i + 1].startswith("hint:") else ""
            return (ln.removeprefix("error:").strip() + (f" ({hint})" if hint else ""))[:400]
    return (lines[-1] if lines else "no output")[:400]


# One child process per method: `peft-apps train ...`, then (if it succeeded) `peft-apps eval ...`, in the same
# interpreter (the libraries load once). Its peak memory is the method's alone.
_CHILD = ("import sys\n"
          "from peft_apps.core.cli import main\n"
          "cut = sys.argv.index('--then')\n"
          "sys.exit(main(sys.argv[1:cut]) or main(sys.argv[cut + 1:]))\n")


def run_method(app: str, recipe: str, method: str, overrides: list[str], out: Path, headline: str) -> dict[str, Any]:
    """Train and evaluate one method in a child process; its row of the table."""
    run_dir = out / method
    log = out / "logs" / f"{method}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    train = ["train", app, "-r", recipe, *overrides, f"peft.method={method}", f"train.output_dir={run_dir}", "--force"]
    evaluate = ["eval", app, "--adapter", str(run_dir), "--force"]
    cmd = [sys.executable, "-c", _CHILD, *train, "--then", *evaluate]
    for stale in ("metrics.json", "eval_metrics.json"):  # this method's earlier try (it trains with --force)
        (run_dir / stale).unlink(missing_ok=True)
    t0 = time.perf_counter()
    with log.open("w") as f:
        f.write("$ peft-apps " + " ".join(train) + "\n$ peft-apps " + " ".join(evaluate) + "\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "120"}).returncode
    row: dict[str, Any] = {"method": method, "source": METHODS[method].source, "run": str(run_dir), "log": str(log),
                           "wall_seconds": round(time.perf_counter() - t0, 1)}
    trained_file, evaluated_file = run_dir / "metrics.json", run_dir / "eval_metrics.json"
    if rc != 0 or not evaluated_file.is_file():
        step = "eval" if trained_file.is_file() else "train"
        return {**row, "status": "interrupted" if rc in (130, -2) else "failed", "failed_in": step,
                "error": _error_line(log)}
    trained = json.loads(trained_file.read_text())
    evaluated = json.loads(evaluated_file.read_text())
    trainable, total = trained.get("trainable_parameters"), trained.get("total_parameters")
    return {**row, "status": "ok", "metric": headline, "value": evaluated.get(headline),
            "eval_metrics": {k: v for k, v in evaluated.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
            "trainable_parameters": trainable,
            "trainable_share": (trainable / total) if trainable is not None and total else None,
            "peak_rss_mib": trained.get("peak_rss_mib"), "peak_cuda_mib": trained.get("peak_cuda_mib"),
            "tokens_per_second": trained.get("useful_tokens_per_second"), "adapter_bytes": _size(run_dir),
            "train_seconds": trained.get("train_seconds"), "steps": trained.get("steps"),
            "train_loss": trained.get("train_loss"), "device": trained.get("device")}


def _load_state(path: Path, identity: dict[str, Any], force: bool) -> dict[str, Any]:
    if force or not path.is_file():
        return {**identity, "results": {}}
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e})", hint="--force starts the sweep over") from None
    differs = [k for k in identity if k != "methods" and state.get(k) != identity[k]]
    if differs:
        raise UserError(f"{path.parent} holds a different sweep ({', '.join(differs)} differ)",
                        hint="--force starts over there, or -o OTHER_FOLDER")
    state["methods"] = list(dict.fromkeys([*state.get("methods", []), *identity["methods"]]))
    return state


def sweep(app_name: str, recipe_arg: str, methods: list[str], overrides: list[str], out: Path | None,
          force: bool, console) -> tuple[Path, list[dict[str, Any]]]:
    from rich.markup import escape

    from peft_apps.core.config import load_recipe
    from peft_apps.core.registry import get_app

    app = get_app(app_name)
    path = app.recipe_path(recipe_arg)
    if any(o.split("=", 1)[0] in ("peft.method", "train.output_dir") for o in overrides):
        raise UserError("the sweep sets peft.method and train.output_dir itself",
                        hint="name the methods with --methods and the folder with -o")
    recipe = load_recipe(path, list(overrides), app=app_name)  # bad overrides: one message before any training
    headline = (app.headline_for(recipe) or ("eval_loss",))[0]
    out = out or Path(f"runs/{app_name}-{recipe.name}-sweep")
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out} is a file; give a folder path")
    out.mkdir(parents=True, exist_ok=True)
    identity = {"app": app_name, "recipe": str(recipe_arg), "overrides": list(overrides), "metric": headline,
                "methods": methods}
    state = _load_state(out / STATE, identity, force)
    results: dict[str, dict] = state["results"]
    try:
        for i, m in enumerate(methods, 1):
            done = results.get(m)
            if done and done.get("status") == "ok" and Path(done["run"]).is_dir():
                console.print(f"[dim]{i}/{len(methods)} {m}: finished earlier ({headline} {done['value']})[/]",
                              highlight=False)
                continue
            with console.status(f"{i}/{len(methods)} {m}: training and evaluating (log: {out / 'logs' / m}.log)"):
                row = run_method(app_name, str(path), m, list(overrides), out, headline)
            results[m] = row
            _write(out, state)
            if row["status"] == "interrupted":
                raise KeyboardInterrupt
            if row["status"] == "ok":
                console.print(f"{i}/{len(methods)} [green]{m}[/]: {headline} {_fmt(row['value'])}, "
                              f"{row['trainable_parameters']:,} trainable, {row['wall_seconds']:.0f} s",
                              highlight=False)
            else:
                console.print(f"{i}/{len(methods)} [red]{m} failed[/] in {row['failed_in']}: "
                              f"{escape(row['error'])}", highlight=False)
    except KeyboardInterrupt:
        _write(out, state)
        console.print(f"[yellow]interrupted[/]: the finished methods are kept in {out / STATE}; the same command "
                      "goes on from there")
        raise
    return out, [results[m] for m in state["methods"] if m in results]


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _int(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def markdown(state: dict[str, Any]) -> str:
    metric = state["metric"]
    rows = [state["results"][m] for m in state["methods"] if m in state["results"]]
    memory = "peak CUDA" if any(r.get("peak_cuda_mib") for r in rows) else "peak RSS"
    head = (f"| method | source | {metric} | trainable | share | {memory} | train tokens/s | adapter | "
            "train s | wall s | status |")
    lines = [f"# Sweep: {state['app']} -r {state['recipe']}" + (f" {' '.join(state['overrides'])}"
                                                                  if state["overrides"] else ""), "",
             head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['method']} | {r['source']} | - | - | - | - | - | - | - | {r['wall_seconds']:.0f} | "
                         f"{r['status']} in {r.get('failed_in', '?')}: {r.get('error', '').replace('|', '/')} |")
            continue
        mem = r.get("peak_cuda_mib") or r.get("peak_rss_mib")
        lines.append(f"| {r['method']} | {r['source']} | {_fmt(r['value'])} | {r['trainable_parameters']:,} | "
                     f"{100 * (r['trainable_share'] or 0):.3g}% | {_int(mem)} MiB | {_int(r['tokens_per_second'])} | "
                     f"{_bytes(r['adapter_bytes'])} | {r['train_seconds']:.0f} | {r['wall_seconds']:.0f} | ok |")
    return "\n".join(lines) + "\n"


def plot(state: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [state["results"][m] for m in state["methods"]
          if state["results"].get(m, {}).get("status") == "ok" and state["results"][m].get("value") is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in ok:
        ax.scatter(r["trainable_parameters"], r["value"], s=40)
        ax.annotate(r["method"], (r["trainable_parameters"], r["value"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=9)
    if ok:
        ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(state["metric"])
    ax.set_title(f"{state['app']} -r {state['recipe']}: {state['metric']} against trainable parameters")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write(out: Path, state: dict[str, Any]) -> None:
    atomic_write(out / STATE, json.dumps(state, indent=2))
    atomic_write(out / "sweep.md", markdown(state))
    plot(state, out / "sweep.png")
