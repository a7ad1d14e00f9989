"""Unit-test generation metrics, as the PEFT unit-test study (Storhaug & Li 2024) reports them.

An `evaluate` module kept in the app and loaded by path (a Hub metric cannot load offline):

    import evaluate
    m = evaluate.load("apps/testgen/metrics/testgen.py")
    m.compute(predictions=[model text], references=[gold rest of the test], prompts=[code prompt],
              langs=["java"])

Definitions (per language, then over all records weighted by their count)
- syntax_validity: the share of generated tests that parse with no ERROR or MISSING node (tree-sitter).
  The test parsed is the prompt's test class (Java: from its last `class` header) or test signature
  (Python) followed by the output, cut where the test method ends; an output that never closes its
  method, or is empty, is invalid.
- codebleu: CodeBLEU (Ren et al. 2020) of the generated test method (the output cut where the method
  ends) against the gold one, with the standard weights 0.25 each for n-gram match, keyword-weighted
  n-gram match, AST subtree match (tree-sitter) and data-flow match; corpus-level, 0-1. The four parts
  are reported too (`codebleu_ngram`, `codebleu_weighted_ngram`, `codebleu_syntax`, `codebleu_dataflow`).
  Where no reference has a data flow (short assert-only tests often have none) the data-flow part is
  undefined: it is reported as null and the other three parts share its weight (CodeXGLUE's script
  scores it 0 with a warning to ignore it). A data-flow score of 0 stays 0 (the PyPI implementation
  counts it as 1, so that even an empty output gets 0.25).
  Computed with the CodeBLEU implementation in `metrics/codebleu/`: the `codebleu` 0.7.0 package's code,
  checked against that package run by hand on the bundled samples (equal to 1e-6 under the same
  PYTHONHASHSEED; the package's data-flow part moves by up to ~0.005 with Python's hash seed, here as there:
  see its SOURCE.txt and tests/test_testgen.py).
- exact_match: output method equal to the gold method after joining whitespace runs.

Execution metrics (pass rate, line and branch coverage of the focal function) need the project the test
belongs to and run in the sandbox: the app adds them for records that carry one (`apps/testgen/app.py`).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import datasets
import evaluate


def compute(predictions: Sequence[str], references: Sequence[str], prompts: Sequence[str],
            langs: Sequence[str]) -> dict[str, Any]:
    from peft_apps.apps.testgen.units import method_text, syntax_valid

    n = len(predictions)
    if not (len(references) == len(prompts) == len(langs) == n):
        raise ValueError("predictions, references, prompts and langs must have one entry per record")
    out: dict[str, Any] = {"n": n}
    if n == 0:
        return out
    valid = [syntax_valid(lang, p, o) for lang, p, o in zip(langs, prompts, predictions)]
    out["syntax_validity"] = sum(valid) / n
    hyp = [method_text(lang, p, o) for lang, p, o in zip(langs, prompts, predictions)]
    ref = [method_text(lang, p, r) for lang, p, r in zip(langs, prompts, references)]
    out["exact_match"] = sum(" ".join(h.split()) == " ".join(r.split()) for h, r in zip(hyp, ref)) / n
    parts = {"codebleu": "codebleu", "ngram_match_score": "codebleu_ngram",
             "weighted_ngram_match_score": "codebleu_weighted_ngram", "syntax_match_score": "codebleu_syntax",
             "dataflow_match_score": "codebleu_dataflow"}
    totals: dict[str, float | None] = {v: 0.0 for v in parts.values()}
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # the implementation warns through the root logger; handled in _codebleu
    try:
        per_lang = {lang: _codebleu(lang, [ref[i] for i in range(n) if langs[i] == lang],
                                    [hyp[i] for i in range(n) if langs[i] == lang]) for lang in sorted(set(langs))}
    finally:
        logging.disable(previous)
    for lang, scores in per_lang.items():
        idx = [i for i in range(n) if langs[i] == lang]
        for k, name in parts.items():
            if scores[k] is None or totals[name] is None:
                totals[name] = None  # undefined for one language: not averaged
            else:
                totals[name] += scores[k] * len(idx)
            if len(set(langs)) > 1:
                out[f"{lang}_{name}"] = scores[k]
    out.update({k: (v / n if v is not None else None) for k, v in totals.items()})
    return out


def _codebleu(lang: str, refs: list[str], hyps: list[str]) -> dict[str, Any]:
    from peft_apps.apps.testgen.metrics.codebleu import calc_codebleu
    from peft_apps.apps.testgen.metrics.codebleu.dataflow_match import corpus_dataflow_match

    scores = calc_codebleu(refs, hyps, lang=lang)
    # The implementation combines the parts as 0.25 * (... + (dataflow or 1)): a data-flow score of 0 counts
    # as a full match, so even empty outputs get 0.25. Here: a real 0 stays 0, and where no reference has a
    # data flow the part is undefined (None) and the other three parts share its weight.
    parts = [scores["ngram_match_score"], scores["weighted_ngram_match_score"], scores["syntax_match_score"]]
    if not scores["dataflow_match_score"] and not corpus_dataflow_match([[r] for r in refs], refs, lang):
        scores["dataflow_match_score"] = None
        scores["codebleu"] = sum(parts) / 3
    else:
        scores["codebleu"] = (sum(parts) + scores["dataflow_match_score"]) / 4
    return scores


class TestGen(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=__doc__,
            citation="Storhaug & Li, Parameter-Efficient Fine-Tuning of LLMs for Unit Test Generation, 2024; "
                     "Ren et al., CodeBLEU, 2020",
            inputs_description="predictions: model texts; references: gold test rests; prompts: the code prompts; "
                               "langs: java or python",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions: list[str], references: list[str], prompts: list[str] | None = None,
                 langs: list[str] | None = None) -> dict[str, Any]:
        prompts = prompts if prompts is not None else [""] * len(predictions)
        return compute(predictions, references, prompts, langs or ["java"] * len(predictions))
