"""One rule joins predictions to gold records (`core.matching.MATCH_RULE`): by id when the predictions carry
ids, by position only when none does; never a per-row fallback. Checked on hand-written files and on
real CodeReviewer data with a repeated id (the exam files' skipped tasks are in test_exam)."""

import json

import pytest

from peft_apps.core.data import Record
from peft_apps.core.errors import UserError
from peft_apps.core.matching import MATCH_RULE, join_predictions
from peft_apps.core.resources import data_dir
from helpers.preloaded import run_cli

REPEATED = data_dir("codereview", "cls-repeated-ids.jsonl")


def _golds(*ids):
    return [Record.simple(i, "q", "a") for i in ids]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_by_id_by_position_and_no_fallback(tmp_path):
    golds = _golds("a", "b", "c")
    j = join_predictions(_write(tmp_path / "p.jsonl", [{"id": "c", "output": "3"}, {"id": "a", "output": "1"}]),
                         golds)
    assert j.rule == "id" and j.outputs == {2: "3", 0: "1"}
    j = join_predictions(_write(tmp_path / "p.jsonl", [{"output": "1"}, {"output": "2"}]), golds)
    assert j.rule == "position" and j.outputs == {0: "1", 1: "2"}
    # ids that look like positions are ids: "1" is no gold id, and is not taken as position 1
    p = _write(tmp_path / "p.jsonl", [{"id": "a", "output": "1"}, {"id": 1, "output": "2"}])
    j = join_predictions(p, golds)
    assert j.outputs == {0: "1"} and j.unknown == ["1"]
    j = join_predictions(p, golds, by="position")  # forced: ids ignored
    assert j.rule == "position" and j.outputs == {0: "1", 1: "2"}


def test_repeated_gold_ids_take_predictions_in_file_order(tmp_path):
    golds = _golds("x", "y", "x")
    j = join_predictions(_write(tmp_path / "p.jsonl", [{"id": "x", "output": "first"}, {"id": "y", "output": "y"},
                                                      {"id": "x", "output": "second"}]), golds, "g.jsonl")
    assert j.outputs == {0: "first", 1: "y", 2: "second"}
    with pytest.raises(UserError, match="a prediction too many for id 'x': g.jsonl has 2 records"):
        join_predictions(_write(tmp_path / "p.jsonl", [{"id": "x", "output": "1"}] * 3), golds, "g.jsonl")


def test_files_that_cannot_be_joined_say_which_rule_applied_and_show_ids(tmp_path):
    golds = _golds("doc-1", "doc-2")
    with pytest.raises(UserError) as e:
        join_predictions(_write(tmp_path / "p.jsonl", [{"id": "0", "output": "1"}, {"id": "1", "output": "2"}]),
                         golds, "g.jsonl")
    text = str(e.value)
    assert "joined by id" in text and "'0', '1'" in text and "'doc-1', 'doc-2'" in text and "--by position" in text
    with pytest.raises(UserError, match=r"p.jsonl:2: no \"id\", though 1 other prediction"):
        join_predictions(_write(tmp_path / "p.jsonl", [{"id": "doc-1", "output": "1"}, {"output": "2"}]), golds)
    with pytest.raises(UserError, match="3 predictions for 2 gold records .*joined by position"):
        join_predictions(_write(tmp_path / "p.jsonl", [{"output": "1"}] * 3), golds)


def test_score_help_states_the_rule():
    p = run_cli(["peft-apps", "score", "--help"])
    flat = " ".join(p.stdout.split())
    assert "by id when the predictions carry ids" in flat and "--by" in flat and "by position" in flat
    assert "Never a per-row fallback" in flat
    assert MATCH_RULE.startswith("Predictions join gold records by id")


def test_real_codereview_file_with_a_repeated_id_scores(tmp_path):
    """Two unrelated real records share id 19290 (a C hunk that needs a comment, a Python one that does
    not). Predictions in file order with their ids match back exactly; a third one for that id is an error."""
    rows = [json.loads(x) for x in REPEATED.read_text().splitlines()]
    assert [r["y"] for r in rows if r["id"] == 19290] == [1, 0]
    pred = _write(tmp_path / "pred.jsonl", [{"id": r["id"], "output": "yes" if r["y"] else "no"} for r in rows])
    out = tmp_path / "m.json"
    p = run_cli(["peft-apps", "score", "codereview", "--task", "necessity", "--gold", str(REPEATED), "--pred",
                 str(pred), "-o", str(out)])
    assert p.returncode == 0, p.stderr
    m = json.loads(out.read_text())
    assert m["f1"] == 1.0 and m["accuracy"] == 1.0 and m["n"] == 24 and m["matched_by"] == "id"
    assert "'19290 x2'" in p.stderr and "in file order" in p.stderr
    # swapping the two answers for 19290 is caught: they join in file order, not to either record at will
    swapped = [{"id": r["id"], "output": ("no" if r["y"] else "yes") if r["id"] == 19290 else
                ("yes" if r["y"] else "no")} for r in rows]
    _write(pred, swapped)
    out2 = tmp_path / "m2.json"
    p = run_cli(["peft-apps", "score", "codereview", "--task", "necessity", "--gold", str(REPEATED), "--pred",
                 str(pred), "-o", str(out2)])
    assert p.returncode == 0, p.stderr
    assert json.loads(out2.read_text())["accuracy"] == pytest.approx(22 / 24)
    _write(pred, [{"id": r["id"], "output": "yes"} for r in rows] + [{"id": 19290, "output": "no"}])
    p = run_cli(["peft-apps", "score", "codereview", "--task", "necessity", "--gold", str(REPEATED), "--pred",
                 str(pred)])
    assert p.returncode == 2 and "a prediction too many for id 19290" in p.stderr and "Traceback" not in p.stderr
