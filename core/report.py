"""Evaluation results as files a person can open: metrics.json, report.md, and PNG charts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peft_apps.core.io import atomic_write


def format_value(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(format_value(r.get(c, "")) for c in columns) + " |\n" for r in rows)


def write_eval_report(out_dir: Path, title: str, metrics: dict[str, Any], headline: tuple[str, ...] = ()
                      ) -> dict[str, Path]:
    """metrics.json + report.md, headline metrics first (+ per_class.png and confusion.png when per-class
    results exist)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": out_dir / "eval_metrics.json", "markdown": out_dir / "eval_report.md"}
    atomic_write(files["json"], json.dumps(metrics, indent=2, ensure_ascii=False))
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    order = [k for k in headline if k in scalars] + [k for k in scalars if k not in headline]
    md = [f"# {title}\n", markdown_table([{"metric": k, "value": scalars[k]} for k in order], ["metric", "value"])]
    pc = metrics.get("per_class")
    if pc:
        md.append("\n## Per class\n")
        md.append(markdown_table([{"class": k, **v} for k, v in pc.items()],
                                 ["class", "precision", "recall", "f1", "support"]))
        files["per_class_png"] = out_dir / "eval_per_class.png"
        _bar_chart(pc, files["per_class_png"], title)
    conf = metrics.get("confusion")
    if conf and conf.get("matrix"):
        files["confusion_png"] = out_dir / "eval_confusion.png"
        _confusion_png(conf["labels"], conf["matrix"], files["confusion_png"])
    atomic_write(files["markdown"], "\n".join(md))
    return files


def _bar_chart(pc: dict[str, dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(pc)
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(labels) + 2), 3.5), dpi=100)
    ax.bar(labels, [pc[k]["f1"] for k in labels], color="#4c72b0")
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.set_title(title)
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _confusion_png(cols: list[str], matrix: list[list[int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = cols[: len(matrix)]
    fig, ax = plt.subplots(figsize=(0.6 * len(cols) + 2, 0.6 * len(rows) + 1.5), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    for i, r in enumerate(matrix):
        for j, v in enumerate(r):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
