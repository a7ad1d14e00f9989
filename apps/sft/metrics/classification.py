"""Exact match, per-class precision/recall/F1 and a confusion matrix for label-like outputs.

An `evaluate` module, kept in the app and loaded by path (a Hub metric cannot load offline):

    import evaluate
    m = evaluate.load("apps/sft/metrics/classification.py")
    m.compute(predictions=["LOC", "per"], references=["LOC", "ORG"])   # exact_match, macro_f1, per_class, ...

Answers compare as a person would: case, surrounding space and a final period do not count.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import datasets
import evaluate


def normalize(text: str) -> str:
    """Compare answers as a person would: case, surrounding space and a final period do not count."""
    return " ".join(text.strip().strip(".").split()).lower()


def exact_match(preds: Sequence[str], golds: Sequence[str]) -> float:
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} references")
    if not golds:
        return 0.0
    return sum(normalize(p) == normalize(g) for p, g in zip(preds, golds)) / len(golds)


def per_class(preds: Sequence[str], golds: Sequence[str]) -> dict[str, dict[str, float]]:
    """Precision/recall/F1/support for each gold label (predictions outside the label set count as wrong)."""
    p_n = [normalize(p) for p in preds]
    g_n = [normalize(g) for g in golds]
    labels = sorted(set(g_n))
    tp, fp, fn = Counter(), Counter(), Counter()
    for p, g in zip(p_n, g_n):
        if p == g:
            tp[g] += 1
        else:
            fn[g] += 1
            fp[p] += 1
    out = {}
    for lab in labels:
        prec = tp[lab] / (tp[lab] + fp[lab]) if tp[lab] + fp[lab] else 0.0
        rec = tp[lab] / (tp[lab] + fn[lab]) if tp[lab] + fn[lab] else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        out[lab] = {"precision": prec, "recall": rec, "f1": f1, "support": tp[lab] + fn[lab]}
    return out


def confusion(preds: Sequence[str], golds: Sequence[str]) -> tuple[list[str], list[list[int]]]:
    """Rows: gold labels; columns: gold labels then 'other' for predictions outside the label set."""
    g_n = [normalize(g) for g in golds]
    labels = sorted(set(g_n))
    cols = labels + ["other"]
    m = [[0] * len(cols) for _ in labels]
    for p, g in zip((normalize(p) for p in preds), g_n):
        j = cols.index(p) if p in labels else len(labels)
        m[labels.index(g)][j] += 1
    return cols, m


def classification_report(preds: Sequence[str], golds: Sequence[str]) -> dict[str, Any]:
    pc = per_class(preds, golds)
    macro = sum(v["f1"] for v in pc.values()) / len(pc) if pc else 0.0
    cols, m = confusion(preds, golds)
    return {"exact_match": exact_match(preds, golds), "macro_f1": macro, "n": len(golds),
            "per_class": pc, "confusion": {"labels": cols, "matrix": m}}


class Classification(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions, references: one label text per example",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, Any]:
        return classification_report(predictions, references)
