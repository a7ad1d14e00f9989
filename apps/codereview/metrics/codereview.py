"""Code review metrics, as CodeReviewer (Li et al. 2022) and LLaMA-Reviewer (Lu et al. 2023) report them.

An `evaluate` module kept in the app and loaded by path (a Hub metric cannot load offline):

    import evaluate
    m = evaluate.load("apps/codereview/metrics/codereview.py")
    m.compute(predictions=["yes", "no"], references=["yes", "yes"], task="necessity")   # precision, recall, f1
    m.compute(predictions=["rename this"], references=["please rename this"], task="comment")  # bleu4, ...
    m.compute(predictions=["x = 1"], references=["x = 1"], task="refine")              # exact_match, bleu4

Definitions
- necessity (does a diff hunk need a review comment?): the positive class is "needs a comment" (gold
  label y=1, answer "yes"). precision = TP / (TP + FP), recall = TP / (TP + FN), F1 their harmonic mean,
  accuracy over all hunks. An answer that is neither yes nor no counts as "no" (and the parser counts it).
- BLEU-4 (comments and refined code): CodeReviewer's smoothed sentence BLEU, averaged over examples and
  scaled to 0-100, exactly as its evaluator computes it (`bleu_fromstr` in microsoft/CodeBERT,
  CodeReviewer/code/evaluator/smooth_bleu.py). Tokens: nltk's wordpunct split (`\\w+|[^\\w\\s]+`),
  stopwords removed there (case-sensitive: "The" is kept, "the" dropped), lower-cased, split again into
  word runs and single punctuation marks, then NIST's punctuation split (which also splits "_" out of
  words). Per example: clipped n-gram matches for n = 1..4 against the reference; log precision
  log(m1) - log(c1) and, for n > 1, log(mn + 1) - log(cn + 1) (add-one smoothing), each with the smallest
  float added so that no log is of 0; brevity penalty min(0, 1 - (r + 1) / (c + 1)) in log space with r,
  c the reference and candidate lengths; BLEU = exp(mean log pn + penalty). An empty candidate scores
  exp(-r).
- comment generation: `bleu4` is computed after removing English stopwords (CodeReviewer's list, below)
  from both texts, as CodeReviewer reports it; `bleu4_with_stopwords` keeps them.
- code refinement: `exact_match` compares the revised code with the gold code after joining whitespace
  runs, as CodeReviewer's run_test_ref.py does); `bleu4` with stopwords kept (its `rmstop=False`).

Checked against the official script: `tests/test_codereview.py::test_bleu_equals_codereviewers_evaluator`
holds the figures `bleu_fromstr(preds, golds, rmstop=True/False)` printed, run by hand on the bundled real
comments with predictions that vary case, punctuation, tabs and stopwords; these functions match them to
0.01. Written here rather than imported: the evaluator is a script in a research repository (no package), it
needs nltk, and sacrebleu's and nltk's BLEU presets smooth and tokenize differently.
"""

from __future__ import annotations

import math
import re
import sys
from collections import Counter
from typing import Any, Sequence

import datasets
import evaluate

# CodeReviewer's English stopword list (microsoft/CodeBERT, CodeReviewer/code/evaluator/stopwords.txt, MIT)
STOPWORDS = frozenset("""
about above abroad according accordingly across actually adj after afterwards again against ago ahead ain't
all almost alone along alongside already also although always am amid amidst among amongst an and any anybody
anyhow anyone anything anyway anyways anywhere apart appear appropriate are aren't around as a's aside associated
at available away awfully back backward backwards be became because become becomes becoming been before
beforehand begin behind being believe below best better between beyond both brief but by came can cannot cant
can't caption cause causes certain certainly clearly c'mon co co. com come comes concerning consequently contain
containing contains corresponding could couldn't course c's dare daren't definitely described despite did didn't
different directly do does doesn't doing don't down downwards during each edu eg eight eighty either elsewhere
end ending entirely et etc even ever evermore every everybody everyone everything everywhere ex exactly except
fairly far farther few fewer fifth first five followed following follows for forever former formerly forth
forward found four from further furthermore get gets getting given gives go goes going gone got gotten greetings
had hadn't half happens hardly has hasn't have haven't having he he'd he'll hello help hence her here hereafter
hereby herein here's hereupon hers herself he's hi him himself his hither hopefully how howbeit however hundred
i'd ie if ignored i'll i'm immediate in inasmuch inc inc. indeed indicate indicated indicates inner inside
insofar into inward is isn't it it'd it'll its it's itself i've just k keep keeps kept know known knows last
lately later latter latterly least less lest let let's like liked likely likewise little look looking looks low
lower ltd made mainly make makes many may maybe mayn't me mean meantime meanwhile merely might mightn't mine minus
moreover most mostly mr mrs much must mustn't my myself name namely nd near nearly needn't neither never neverf
neverless nevertheless next nine ninety no nobody non none nonetheless noone no-one nor normally not nothing
notwithstanding novel now nowhere obviously of off often oh ok okay old on once one ones one's only onto opposite
or otherwise ought oughtn't our ours ourselves out outside over overall own particular particularly past per
perhaps placed plus possible presumably probably que quite qv rather rd re really reasonably recent recently
regarding regardless regards relatively respectively right round said same saw say saying says second secondly
see seeing seem seemed seeming seems seen self selves sensible sent seven several shall shan't she she'd she'll
she's should shouldn't since six so somebody someday somehow someone something sometime sometimes somewhat
somewhere sorry specified specify specifying still sub such sup sure take taken taking tell tends th than that
that'll thats that's that've the their theirs them themselves then thence there thereafter thereby there'd
therefore therein there'll there're theres there's thereupon there've these they they'd they'll they're they've
thing things think third thirty this thorough thoroughly those though three through throughout thru thus till to
together too took toward towards tried tries truly try trying t's twice two un under underneath undoing
unfortunately unless unlike unlikely until unto up upon upwards us use used uses using usually v value various
versus very via viz vs was wasn't way we we'd well we'll went were we're weren't we've what whatever what'll
what's what've when whence whenever where whereafter whereas whereby wherein where's whereupon wherever whether
which whichever while whilst whither who who'd whoever whole who'll whom whomever who's whose why will with within
without wonder won't would wouldn't yes yet you you'd you'll your you're yours yourself yourselves you've zer
""".split())

TASKS = ("necessity", "comment", "refine")
_WORDPUNCT = re.compile(r"\w+|[^\w\s]+")  # nltk's wordpunct_tokenize
_SPLIT_PUNCTS = re.compile(r"[\w]+|[^\s\w]")
# NIST mteval-v11a's tokenization of punctuation, as the evaluator's `normalize` applies it (the apostrophe is
# not among the characters split off; "_", "[", "]", ... are)
_NIST = [(re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
         (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
         (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
         (re.compile(r"([0-9])(-)"), r"\1 \2 ")]


def tokens(text: str, drop_stopwords: bool = False) -> list[str]:
    """The tokens CodeReviewer's evaluator scores (`bleu_fromstr`, then `computeMaps` and `normalize`):
    nltk's wordpunct split (word runs, punctuation runs); stopwords dropped on request, matched with their
    case as written (so "The" stays); lower-cased; word runs and single punctuation marks; then NIST's
    punctuation split, with "&quot;" read as a quote."""
    words = _WORDPUNCT.findall(text)
    if drop_stopwords:
        words = [w for w in words if w not in STOPWORDS]
    s = " ".join(_SPLIT_PUNCTS.findall(" ".join(words).strip().lower()))
    s = s.replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    s = f" {s} "
    for pattern, repl in _NIST:
        s = pattern.sub(repl, s)
    return s.split()


def _ngrams(toks: Sequence[str], n: int) -> Counter:
    return Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))


_TINY = sys.float_info.min


def sentence_bleu4(candidate: Sequence[str], reference: Sequence[str]) -> float:
    """Smoothed BLEU-4 of one tokenized candidate against one reference, in [0, 1], as the evaluator's
    `bleu()` computes it (see the module doc; an empty candidate gets the brevity penalty alone)."""
    log_p = 0.0
    for n in range(1, 5):
        cand, ref = _ngrams(candidate, n), _ngrams(reference, n)
        matches = sum(min(c, ref[g]) for g, c in cand.items())
        total = max(len(candidate) - n + 1, 0)
        add = 1 if n > 1 else 0
        log_p += math.log(matches + add + _TINY) - math.log(total + add + _TINY)
    bp = min(0.0, 1 - (len(reference) + 1) / (len(candidate) + 1))
    return math.exp(log_p / 4 + bp)


def bleu4(predictions: Sequence[str], references: Sequence[str], drop_stopwords: bool = False) -> float:
    """Average smoothed sentence BLEU-4, 0-100 (not rounded; the evaluator rounds to 2 decimals)."""
    if not references:
        return 0.0
    return 100.0 * sum(sentence_bleu4(tokens(p, drop_stopwords), tokens(r, drop_stopwords))
                       for p, r in zip(predictions, references)) / len(references)


def yes_no(text: str) -> bool | None:
    """True for an answer starting with yes (needs a comment), False for no, None otherwise."""
    word = re.match(r"\W*(\w+)", text.lower())
    if not word:
        return None
    return {"yes": True, "no": False, "1": True, "0": False, "true": True, "false": False}.get(word.group(1))


def necessity(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    pred = [yes_no(p) is True for p in predictions]
    gold = [yes_no(r) is True for r in references]
    tp = sum(p and g for p, g in zip(pred, gold))
    fp = sum(p and not g for p, g in zip(pred, gold))
    fn = sum(g and not p for p, g in zip(pred, gold))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = sum(p == g for p, g in zip(pred, gold)) / len(gold) if gold else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": accuracy,
            "predicted_positive": tp + fp, "gold_positive": tp + fn, "n": len(gold)}


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    if not references:
        return 0.0
    return sum(" ".join(p.split()) == " ".join(r.split()) for p, r in zip(predictions, references)) / len(references)


def compute(predictions: Sequence[str], references: Sequence[str], task: str) -> dict[str, Any]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if task == "necessity":
        return necessity(predictions, references)
    if task == "comment":
        return {"bleu4": bleu4(predictions, references, drop_stopwords=True),
                "bleu4_with_stopwords": bleu4(predictions, references), "n": len(references)}
    if task == "refine":
        return {"exact_match": exact_match(predictions, references), "bleu4": bleu4(predictions, references),
                "n": len(references)}
    raise ValueError(f"unknown code review task {task!r}; one of {', '.join(TASKS)}")


class CodeReview(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=__doc__,
            citation="Li et al., CodeReviewer, 2022; Lu et al., LLaMA-Reviewer, ISSRE 2023",
            inputs_description="predictions, references: texts; task: necessity, comment or refine",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions: list[str], references: list[str], task: str = "comment") -> dict[str, Any]:
        return compute(predictions, references, task)
