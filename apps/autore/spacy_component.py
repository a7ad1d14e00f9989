"""spaCy component: `nlp.add_pipe("autore", config={"adapter": DIR})` sets `doc._.relations`.

Each relation is a dict with `head` and `tail` spaCy Spans (the first mention found in the doc, or None),
`relation`, `relation_id` and `source`. Importing `peft_apps.apps.autore.spacy_component` registers
the factory.
"""

from __future__ import annotations

from typing import Any

from spacy.language import Language
from spacy.tokens import Doc

if not Doc.has_extension("relations"):
    Doc.set_extension("relations", default=None)


class AutoREComponent:
    def __init__(self, nlp: Language, name: str, adapter: str | None, adapters: dict[str, str] | None,
                 model: str | None, inverse: bool):
        from .pipeline import AutoRE

        self.pipe = AutoRE.from_pretrained(model, adapters or adapter, inverse=inverse)

    def __call__(self, doc: Doc) -> Doc:
        result = self.pipe.extract(doc.text)
        rels: list[dict[str, Any]] = []
        for t in result.triples:
            rels.append({"head": _span(doc, t["head_mentions"]), "tail": _span(doc, t["tail_mentions"]),
                         "relation": t["relation"], "relation_id": t["relation_id"], "source": t["source"],
                         "head_text": t["head"], "tail_text": t["tail"]})
        doc._.relations = rels
        return doc


def _span(doc: Doc, mentions: list[dict[str, int]]):
    for m in mentions:
        span = doc.char_span(m["start"], m["end"], alignment_mode="expand")
        if span is not None:
            return span
    return None


@Language.factory("autore", default_config={"adapter": None, "adapters": None, "model": None, "inverse": True})
def make_autore(nlp: Language, name: str, adapter: str | None, adapters: dict[str, str] | None,
                model: str | None, inverse: bool) -> AutoREComponent:
    return AutoREComponent(nlp, name, adapter, adapters, model, inverse)
