"""codereview: converters on the real CodeReviewer samples, metrics on hand-checked examples, diff parsing,
and `peft-apps codereview review` on a real multi-file diff (rdjsonl and SARIF validated against their
schemas, paths and line numbers checked against the files the commit produced)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from helpers.preloaded import run_cli
from peft_apps.core.resources import data_dir

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "codereview"
DIFF = DATA / "itsdangerous-0e255fc.diff"
BEFORE = Path(__file__).parent / "fixtures" / "codereview" / "itsdangerous" / "before"
SCHEMAS = Path(__file__).parent / "fixtures" / "schemas"


def recipe(**task):
    from peft_apps.core.config import Recipe

    return Recipe(app="codereview", task=task)


def app():
    from peft_apps.core.registry import get_app

    return get_app("codereview")


def metric(preds, refs, task):
    from peft_apps.apps.codereview.metrics.codereview import compute

    return compute(preds, refs, task)


def cli(*args, cwd=None, input=None):
    return run_cli(["peft-apps", *args], cwd=cwd, input=input)


# ---- converters ---------------------------------------------------------------------------------------

def test_necessity_records_from_the_real_sample():
    rows = [json.loads(x) for x in (DATA / "cls-test.jsonl").read_text().splitlines()]
    recs = app().read(DATA / "cls-test.jsonl", recipe(task="necessity"))
    assert len(recs) == len(rows) == 120
    assert [r.id for r in recs] == [str(x["id"]) for x in rows]
    assert [r.completion for r in recs] == ["yes" if x["y"] == 1 else "no" for x in rows]
    assert Counter(r.completion for r in recs) == {"yes": 68, "no": 52}
    prompt = recs[0].prompt[-1]["content"]
    assert rows[0]["patch"].rstrip("\n") in prompt and prompt.endswith("Answer yes or no.")
    # the enclosing scope comes from the old file (`oldf`) through tree-sitter, for most hunks
    scoped = [r for r in recs if r.meta["fields"]["scope"]]
    assert len(scoped) > 60
    java = next(r for r in recs if r.meta["fields"]["lang"] == "java" and r.meta["fields"]["scope"])
    assert "class" in java.meta["fields"]["scope"] or "(" in java.meta["fields"]["scope"]


def test_comment_records_and_what_gives_none_is_counted():
    from peft_apps.core.errors import issued_warnings

    msg = app().read(DATA / "msg-test.jsonl", recipe(task="comment"))
    rows = [json.loads(x) for x in (DATA / "msg-test.jsonl").read_text().splitlines()]
    assert len(msg) == 40 and [r.completion for r in msg] == [x["msg"].strip() for x in rows]
    cls = app().read(DATA / "cls-test.jsonl", recipe(task="comment"))
    assert len(cls) == 68  # the y=1 rows: the others have no comment, and say so
    assert any("52 of 120 rows give no comment example" in w for w in issued_warnings())
    both = app().read(DATA / "cls-test.jsonl", recipe(task="all"))
    assert len(both) == 120 + 68 and {r.id.split(":")[0] for r in both} == {"necessity", "comment"}


def test_refinement_records_in_codereviewers_schema(tmp_path):
    from peft_apps.core.errors import UserError

    rows = [{"old_hunk": "@@ -1,2 +1,2 @@\n def f(x):\n-    return x+1", "oldf": "def f(x):\n    return x+1\n",
             "hunk": "@@ -1,2 +1,2 @@\n def f(x):\n+    return x + 1", "comment": "Spaces around +, please.",
             "old": "def f(x):\n    return x+1", "new": "def f(x):\n    return x + 1", "lang": "py",
             "ids": [1, 2, 3], "repo": "a/b", "ghid": 7},
            {"old": "int a=1;", "comment": "name it", "new": "int count = 1;", "lang": "java"}]
    path = tmp_path / "ref-test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recs = app().read(path, recipe(task="refine"))
    assert [r.id for r in recs] == ["0", "1"]  # no `id` field: positions
    assert recs[0].completion == "def f(x):\n    return x + 1"
    assert recs[0].meta["fields"]["scope"] == "def f(x):"
    text = recs[0].prompt[-1]["content"]
    assert "Reviewer comment: Spaces around +, please." in text and "return x+1" in text
    del rows[1]["comment"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match=r"ref-test.jsonl:2: missing field 'comment'"):
        app().read(path, recipe(task="refine"))


# ---- metrics ---------------------------------------------------------------------------------------

def test_necessity_precision_recall_f1_by_hand():
    m = metric(["yes", "no", "yes", "maybe"], ["yes", "yes", "no", "no"], "necessity")
    # TP 1 (first), FN 1 (second), FP 1 (third); "maybe" counts as no
    assert (m["precision"], m["recall"], m["f1"], m["accuracy"]) == (0.5, 0.5, 0.5, 0.5)


def test_bleu4_by_hand_smoothing_and_stopwords():
    # p1 5/6, p2 (3+1)/(5+1), p3 (2+1)/(4+1), p4 (1+1)/(3+1), equal lengths: no brevity penalty
    m = metric(["The cat sat on the mat"], ["the cat sat on a mat"], "refine")
    assert m["bleu4"] == pytest.approx(100 * (5 / 6 * 4 / 6 * 3 / 5 * 2 / 4) ** 0.25)
    # two words: without add-one smoothing of n > 1 this would be 0
    assert metric(["hello world"], ["hello world"], "refine")["bleu4"] == pytest.approx(100.0)
    # comments: stopwords ("use", "the", "here") removed -> "please constant" vs "a constant"
    m = metric(["Please use the constant here"], ["use a constant"], "comment")
    assert m["bleu4"] == pytest.approx(100 * (1 / 2 * 1 / 2 * 1 * 1) ** 0.25)
    assert m["bleu4_with_stopwords"] == pytest.approx(100 * (2 / 5 * 1 / 5 * 1 / 4 * 1 / 3) ** 0.25)
    # a short candidate pays the brevity penalty: exp(1 - (3 + 1) / (1 + 1))
    m = metric(["cat"], ["cat sat down"], "refine")
    assert m["bleu4"] == pytest.approx(100 * (1.0 * (1 / 1) * 1 * 1) ** 0.25 * 2.718281828459045 ** (1 - 4 / 2))
    # the evaluator's quirks, kept: an empty candidate scores the brevity penalty alone, exp(-r); stopwords are
    # matched with their case ("The" stays, "the" goes)
    assert metric([""], ["x"], "comment")["bleu4"] == pytest.approx(100 * math.exp(-1))
    assert metric(["The fix"], ["fix"], "comment")["bleu4"] < 100 == metric(["the fix"], ["fix"], "comment")["bleu4"]


# What CodeReviewer's own evaluator printed: `bleu_fromstr(preds, golds, rmstop=True)` and `rmstop=False` of
# microsoft/CodeBERT's CodeReviewer/code/evaluator/smooth_bleu.py (commit c0de43d3), run by hand with nltk
# 3.9 on the bundled real comments (data/codereview/msg-test.jsonl, `msg`) and the predictions
# helpers/bleu_variants.py makes from them; "code" is the same for the added lines of each record's hunk
# (refinement-like references, rmstop=False). The evaluator rounds to 2 decimals.
OFFICIAL_COMMENTS = {"exact": (100.0, 100.0), "upper": (32.84, 100.0), "no_punct": (44.22, 63.1),
                     "spaced_punct": (100.0, 100.0), "tabs": (100.0, 100.0), "stopwords": (61.25, 65.06),
                     "capitalised": (32.8, 100.0), "truncated": (34.9, 33.59), "other_comment": (5.07, 4.21),
                     "mixed": (58.6, 70.25)}
OFFICIAL_CODE = {"exact": 100.0, "upper": 100.0, "no_punct": 16.4, "spaced_punct": 100.0, "tabs": 100.0,
                 "stopwords": 76.26, "capitalised": 100.0, "truncated": 34.95, "other_comment": 3.52, "mixed": 70.5}


def test_bleu_equals_codereviewers_evaluator():
    from helpers.bleu_variants import variants

    rows = [json.loads(x) for x in data_dir("codereview", "msg-test.jsonl").read_text().splitlines()]
    golds = [r["msg"] for r in rows]
    for name, preds in variants(golds).items():
        m = metric(preds, golds, "comment")
        assert m["bleu4"] == pytest.approx(OFFICIAL_COMMENTS[name][0], abs=0.01), name
        assert m["bleu4_with_stopwords"] == pytest.approx(OFFICIAL_COMMENTS[name][1], abs=0.01), name
    code = ["\n".join(x[1:] for x in r["patch"].split("\n") if x.startswith("+")) for r in rows]
    for name, preds in variants(code).items():
        assert metric(preds, code, "refine")["bleu4"] == pytest.approx(OFFICIAL_CODE[name], abs=0.01), name


def test_refinement_exact_match_ignores_whitespace_runs():
    m = metric(["x  =  1\n", "y = 2"], ["x = 1", "y = 3"], "refine")
    assert m["exact_match"] == 0.5


def test_metric_module_loads_by_path_and_score_parses_model_text(tmp_path):
    import evaluate

    m = evaluate.load(str(ROOT / "apps" / "codereview" / "metrics" / "codereview.py"))
    assert m.compute(predictions=["yes"], references=["yes"], task="necessity")["f1"] == 1.0
    gold = DATA / "cls-test.jsonl"
    rows = [json.loads(x) for x in gold.read_text().splitlines()]
    # raw model text, keyed by the records' ids: "Yes." on the first 10 positives, "no" elsewhere
    pos = [r["id"] for r in rows if r["y"] == 1][:10]
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps({"id": r["id"], "output": "Yes." if r["id"] in pos else "no"}) + "\n"
                            for r in rows))
    p = cli("score", "codereview", "--task", "necessity", "--gold", str(gold), "--pred", str(pred), "-o",
            str(tmp_path / "m.json"))
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["precision"] == 1.0 and m["recall"] == pytest.approx(10 / 68) and m["n"] == 120
    p = cli("score", "codereview", "--task", "nope", "--gold", str(gold), "--pred", str(pred))
    assert p.returncode == 2 and "--task/--target must be one of necessity, comment, refine" in p.stderr


# ---- diffs ---------------------------------------------------------------------------------------------

def make_repo(tmp: Path) -> Path:
    """The commit the bundled diff comes from, rebuilt: its parent's files, then the diff applied."""
    repo = tmp / "itsdangerous"
    shutil.copytree(BEFORE, repo)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}

    def git(*a):
        subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True, env=env)
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "before")
    git("apply", str(DIFF))
    git("add", "-A")
    git("commit", "-qm", "manual cleanup")
    return repo


def test_real_diff_hunks_paths_lines_and_scopes(tmp_path):
    from peft_apps.apps.codereview.diff import files_from, git_diff, parse_diff

    repo = make_repo(tmp_path)
    text, read = git_diff("HEAD~1..HEAD", repo)
    parsed = parse_diff(text, "git", 120, read)
    assert parsed.counts["files"] == 7 and len(parsed.hunks) == 36
    for h in parsed.hunks:
        new = (repo / h.path).read_text().split("\n")
        for line_no, line in h.added:
            assert new[line_no - 1] == line  # anchors are lines of the new file
        assert h.start_line <= h.end_line
    exc = [h for h in parsed.hunks if h.path.endswith("exc.py")]
    assert exc[0].scope == "class BadData(Exception): > def __init__(self, message):"
    # the same from a diff file and the working tree
    again = parse_diff(DIFF.read_text(), str(DIFF), 120, files_from(repo))
    assert [(h.path, h.start_line, h.end_line) for h in again.hunks] == \
        [(h.path, h.start_line, h.end_line) for h in parsed.hunks]


def test_binary_rename_only_and_long_hunks_are_skipped_or_cut_and_counted(tmp_path):
    from peft_apps.apps.codereview.diff import parse_diff
    from peft_apps.core.errors import UserError

    text = ("diff --git a/logo.png b/logo.png\nindex 1111111..2222222 100644\nBinary files a/logo.png and "
            "b/logo.png differ\n"
            "diff --git a/old_name.py b/new_name.py\nsimilarity index 100%\nrename from old_name.py\n"
            "rename to new_name.py\n"
            "diff --git a/m.py b/m.py\n--- a/m.py\n+++ b/m.py\n@@ -1,2 +1,8 @@\n x = 1\n+a = 1\n+b = 2\n+c = 3\n"
            "+d = 4\n+e = 5\n+f = 6\n y = 2\n")
    parsed = parse_diff(text, "t.diff", max_lines=4)
    assert parsed.counts["skipped_binary"] == 1 and parsed.counts["skipped_rename_only"] == 1
    assert len(parsed.hunks) == 1 and parsed.hunks[0].truncated and parsed.counts["truncated"] == 1
    assert parsed.hunks[0].patch.count("\n") == 4 and parsed.hunks[0].lines == 8
    for bad, msg in (("", "empty"), ("hello\nworld\n", "holds no file diffs")):
        with pytest.raises(UserError, match=msg):
            parse_diff(bad, "t.diff")


def test_review_command_rejects_bad_diffs_before_loading_a_model(tmp_path):
    (tmp_path / "empty.diff").write_text("")
    (tmp_path / "junk.diff").write_text("not a diff at all\n")
    (tmp_path / "adapter_config.json").write_text("{}")  # checked as a folder only: no model loads
    for name, needle in (("empty.diff", "is empty"), ("junk.diff", "holds no file diffs"),
                         ("missing.diff", "diff file not found")):
        p = cli("codereview", "review", "--diff", str(tmp_path / name), "--adapter", str(tmp_path))
        assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr, p.stderr
    p = cli("codereview", "review", "--git", "nope..HEAD", "--adapter", str(tmp_path), cwd=tmp_path)
    assert p.returncode == 2 and "git" in p.stderr and "Traceback" not in p.stderr


# ---- the review, end to end ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_adapter(tmp_path_factory):
    """The demo recipe's adapter (trained on the bundled necessity records; it answers yes to most hunks)."""
    out = tmp_path_factory.mktemp("cr") / "run"
    p = cli("train", "codereview", "-r", "demo", "task.task=all", "train.epochs=3", f"train.output_dir={out}")
    assert p.returncode == 0, p.stderr[-3000:]
    return out


@pytest.mark.slow
def test_review_outputs_validate_and_point_at_the_changed_lines(demo_adapter, tmp_path):
    import jsonschema

    from peft_apps.apps.codereview.diff import git_diff, parse_diff
    from peft_apps.apps.codereview.pipeline import CodeReviewer
    from peft_apps.apps.codereview.report import to_json, to_markdown, to_rdjsonl, to_sarif

    repo = make_repo(tmp_path)
    text, read = git_diff("HEAD~1..HEAD", repo)
    reviewer = CodeReviewer.from_pretrained(None, str(demo_adapter))
    review = reviewer.review(parse_diff(text, "git", 40, read), suggest=True)
    assert len(review.hunks) == 36 and review.counts["commented"] == len(review.comments) > 0
    # rdjsonl: every line a reviewdog Diagnostic; SARIF: the OASIS 2.1.0 schema
    diag_schema = json.loads((SCHEMAS / "reviewdog-rdf-Diagnostic.json").read_text())
    diags = [json.loads(x) for x in to_rdjsonl(review).splitlines()]
    assert len(diags) == len(review.comments)
    for d in diags:
        jsonschema.validate(d, diag_schema)
        path, rng = d["location"]["path"], d["location"]["range"]
        new = (repo / path).read_text().split("\n")
        hunk = next(h for h in review.hunks if h.path == path and h.start_line == rng["start"]["line"])
        added = [ln[1:] for ln in hunk.patch.split("\n")[1:] if ln.startswith("+")]
        if added:  # the comment sits on the hunk's first to last added line
            assert new[rng["start"]["line"] - 1] == added[0] and new[rng["end"]["line"] - 1] == added[-1]
    sarif = json.loads(to_sarif(review))
    jsonschema.validate(sarif, json.loads((SCHEMAS / "sarif-schema-2.1.0.json").read_text()))
    results = sarif["runs"][0]["results"]
    assert [(r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
             r["locations"][0]["physicalLocation"]["region"]["startLine"]) for r in results] == \
        [(d["location"]["path"], d["location"]["range"]["start"]["line"]) for d in diags]
    assert json.loads(to_json(review))["counts"]["hunks"] == 36
    assert to_markdown(review).startswith(f"# Code review: {len(review.comments)} comment")
    # batched review = one hunk at a time (greedy): the same answers
    one = reviewer.review(parse_diff(text, "git", 40, read), batch_size=1)
    assert [(h.necessity_output, h.comment) for h in one.hunks] == \
        [(h.necessity_output, h.comment) for h in review.hunks]


@pytest.mark.slow
def test_review_cli_in_a_repository_for_ci(demo_adapter, tmp_path):
    repo = make_repo(tmp_path)
    out = tmp_path / "review.rdjsonl"
    p = cli("codereview", "review", "--git", "HEAD~1..HEAD", "--adapter", str(demo_adapter), "-f", "rdjsonl",
            "-o", str(out), "--fail-on-comments", cwd=repo)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert p.returncode == (1 if rows else 0), p.stderr[-2000:]
    assert all(r["location"]["path"].startswith("src/itsdangerous/") for r in rows)
    p = cli("codereview", "review", "--diff", "-", "--adapter", str(demo_adapter), "-f", "json",
            "--max-hunk-lines", "6", cwd=repo, input=DIFF.read_text())
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads(p.stdout)
    assert report["counts"]["truncated"] > 0 and report["notes"] and "cut to 6" in report["notes"][0]
    assert "hunks cut to 6 lines" in p.stderr


@pytest.mark.slow
def test_eval_on_a_real_file_with_a_repeated_id_scores_back_exactly(demo_adapter, tmp_path):
    """`eval` on real CodeReviewer records two of which share an id writes predictions that `score` joins
    back to the same records (by id, the repeated one in file order): the same metrics."""
    from peft_apps.core import loop
    from peft_apps.core.config import load_recipe
    from peft_apps.core.registry import get_app
    from peft_apps.core.resources import data_dir

    gold = data_dir("codereview", "cls-repeated-ids.jsonl")
    a = get_app("codereview")
    r = load_recipe(a.recipe_path("demo"), ["task.task=necessity", f"data.eval={gold}", "eval.max_new_tokens=4"],
                    app="codereview")
    metrics = loop.evaluate(a, str(demo_adapter), r, "eval", tmp_path)
    rows = [json.loads(x) for x in (tmp_path / loop.PREDICTIONS).read_text().splitlines()]
    assert [x["id"] for x in rows].count("19290") == 2 and len(rows) == metrics["n"] == 24
    scored = a.score(gold, tmp_path / loop.PREDICTIONS, r)
    assert scored["missing_predictions"] == 0 and scored["matched_by"] == "id"
    for k in ("precision", "recall", "f1", "accuracy", "n"):
        assert scored[k] == pytest.approx(metrics[k]), k
