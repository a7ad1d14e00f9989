"""Predictions for checking BLEU against CodeReviewer's evaluator: the bundled real comments, changed the
ways model output differs from a reference (case, punctuation, tabs, stopwords, wrong comments, empty).
Deterministic, so the official script's figures (run by hand, kept in the test) stay comparable."""

import re


def variants(golds: list[str]) -> dict[str, list[str]]:
    n = len(golds)

    def words(s):
        return s.split()

    return {
        "exact": list(golds),
        "upper": [g.upper() for g in golds],
        "no_punct": [re.sub(r"[^\w\s]", "", g) for g in golds],
        "spaced_punct": [re.sub(r"([^\w\s])", r" \1 ", g) for g in golds],
        "tabs": [g.replace(" ", "\t") + "\t" for g in golds],
        "stopwords": [f"The {g} However, I think it is fine." for g in golds],
        "capitalised": [" ".join(w.capitalize() for w in words(g)) for g in golds],
        "truncated": [" ".join(words(g)[: max(1, len(words(g)) // 2)]) for g in golds],
        "other_comment": [golds[(i + 7) % n] for i in range(n)],
        "mixed": [["", g.upper(), g.replace(" ", "\t"), f"Please {g.lower()}!", golds[(i + 3) % n],
                   re.sub(r"[.,;:!?]", "", g), "nit: " + g, g.replace("_", " _ ")][i % 8]
                  for i, g in enumerate(golds)],
    }
