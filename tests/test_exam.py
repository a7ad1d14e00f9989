"""exam: converters on the real ZNO-Eval and UNLP files (counts by question type, nulls, skips), answer
extraction on realistic model outputs, exam points with partial credit by hand, seeded self-consistency,
and a tiny train -> eval -> predict -> score run."""

import json

import pytest

from peft_apps.apps.exam.data import load
from peft_apps.apps.exam.parse import extract, normalize_letter, points, vote
from peft_apps.core.resources import data_dir
from helpers.preloaded import run_cli

MATH = data_dir("exam", "zno-math.json")
GEO = data_dir("exam", "zno-geography.json")
UNLP = data_dir("exam", "unlp-sample.jsonl")
L5 = ["А", "Б", "В", "Г", "Д"]


def test_zno_eval_files_load_with_counts_by_type_and_skips_named():
    math = load(MATH)
    kinds = [q.kind for q in math.questions]
    assert (kinds.count("single"), kinds.count("matching")) == (107, 20)
    assert dict(math.skipped) == {"needs a picture": 52, "no options (open answer)": 51}
    assert math.examples["no options (open answer)"][0] == ("zno-math.json: exam 455, task 20: `answers` holds no "
                                                            "lettered option")
    assert len(math.questions) + sum(math.skipped.values()) == 230  # every task accounted for
    q = next(q for q in math.questions if q.kind == "matching")
    assert q.rows[0] == ("1", "Графік функції y=−x^3") and q.letters == L5 and q.correct == ["Г", "Б", "В"]
    assert q.max_points == 3 and q.topic.startswith("Алгебра і початки аналізу")
    with_photo = load(MATH, include_photo=True)
    assert "needs a picture" not in with_photo.skipped and len(with_photo.questions) > len(math.questions)
    geo = load(GEO)
    assert sum(q.kind == "matching" for q in geo.questions) == 21 and all(q.max_points == 4 for q in geo.questions
                                                                          if q.kind == "matching")
    assert geo.skipped["no correct answer"] == 20  # real nulls: options given, correct_answer empty
    # ids: the 0-based position among all tasks of all exams, skipped ones included
    assert [q.id for q in math.questions][:2] == ["0", "2"]


def test_unlp_file_and_bad_questions_are_reported_and_skipped(tmp_path):
    unlp = load(UNLP)
    assert len(unlp.questions) == 40 and all(q.kind == "single" and len(q.options) in (4, 5) for q in unlp.questions)
    bad = tmp_path / "bad.jsonl"
    rows = [{"question": "Q1", "answers": [{"marker": "А", "text": "x"}, {"marker": "Б", "text": "y"}],
             "correct_answers": ["Б"], "subject": "history"},
            {"question": "Q2", "answers": [], "correct_answers": ["А"]},
            {"question": "Q3", "answers": [{"marker": "А", "text": "x"}, {"marker": "А", "text": "y"}],
             "correct_answers": ["А"]},
            {"question": "Q4", "choices": [{"marker": "A", "text": "x"}, {"marker": "B", "text": "y"}],
             "correct_answers": ["Д"]},
            {"question": "Q5", "choices": [{"marker": "A", "text": "x"}, {"marker": "b", "text": "y"}],
             "correct_answers": ["B"]}]
    bad.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    got = load(bad)
    assert [q.id for q in got.questions] == ["0", "4"]
    assert got.questions[1].letters == ["А", "В"] and got.questions[1].correct == ["В"]  # Latin A, b, B
    assert dict(got.skipped) == {"no options (open answer)": 1, "duplicated option markers": 1,
                                 "correct answer not among the options": 1}
    assert got.examples["duplicated option markers"] == ["bad.jsonl, line 3: А given twice among А, А"]
    assert got.examples["correct answer not among the options"] == ["bad.jsonl, line 4: Д not in А, В"]
    assert got.skipped_ids == {"1": "no options (open answer)", "2": "duplicated option markers",
                               "3": "correct answer not among the options"}


def test_missing_and_broken_gold_files_are_one_clear_error(tmp_path):
    broken = tmp_path / "zno.json"
    broken.write_text('{"tasks": [{"question": "Q"')
    pred = tmp_path / "pred.jsonl"
    pred.write_text('{"id": 0, "output": "Відповідь: А"}\n')
    for gold, needle in ((tmp_path / "missing.json", "file not found"), (broken, "not valid JSON"),
                         (tmp_path, "is a folder")):
        p = run_cli(["peft-apps", "score", "exam", "--gold", str(gold), "--pred", str(pred)])
        assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]


@pytest.mark.parametrize("text,kind,rows,want", [
    ("Розглянемо кожен варіант. ... Отже, правильна відповідь В.\nВідповідь: В", "single", 0, ["В"]),
    ("Відповідь: B", "single", 0, ["В"]),  # Latin B read as Cyrillic В
    ("Відповідь: Б) «Інститутка»", "single", 0, ["Б"]),
    ("**Відповідь:** г", "single", 0, ["Г"]),
    ("Спочатку А здається правильним, але ні.\nВідповідь: Д", "single", 0, ["Д"]),  # the last key word counts
    ("Answer: A", "single", 0, ["А"]),  # the English prompt's key word
    ("Відповідь: 1-Б, 2-Д, 3-А, 4-В", "matching", 4, ["Б", "Д", "А", "В"]),
    ("Відповідь: 1 – Б, 2 – Д, 3 – А, 4 – В", "matching", 4, ["Б", "Д", "А", "В"]),
    ("Відповідь:\n1 — Б\n2 — Д\n3 — A\n4 — B", "matching", 4, ["Б", "Д", "А", "В"]),
    ("Відповідь: В;Д;А;Б", "matching", 4, ["В", "Д", "А", "Б"]),
    ("Відповідь: 1)Г 2)Б 3)В", "matching", 3, ["Г", "Б", "В"]),
    ("Я не знаю.", "single", 0, None),
    ("Відповідь: Е", "single", 0, None),  # not among the options
    ("Відповідь: 1-Б, 2-Д", "matching", 4, ["Б", "Д", "", ""]),  # two rows of four: the others score 0
    ("Відповідь: 2-Д", "matching", 4, ["", "Д", "", ""]),
    ("Відповідь: А або Б", "single", 0, None),  # a hedge is no answer
    ("Відповідь: А чи Б?", "single", 0, None),
    ("Відповідь: Б/В", "single", 0, None),
    ("Відповідь: А, Б", "single", 0, None),
    ("Answer: A or B", "single", 0, None),
    ("Відповідь: В (А і Б не підходять)", "single", 0, ["В"]),  # an explanation, not a hedge
    ("Відповідь: Б) Київ, А також Львів", "single", 0, ["Б"]),
    ("", "single", 0, None),
])
def test_answer_extraction(text, kind, rows, want):
    assert extract(text, kind, L5, rows) == want


def test_points_with_partial_credit_and_the_metric_by_hand():
    from peft_apps.apps.exam.metrics.exam import compute

    assert points("single", ["Б"], ["Б"]) == 1 and points("single", None, ["Б"]) == 0
    assert points("matching", ["Б", "Д", "А", "А"], ["Б", "Д", "В", "А"]) == 3
    m = compute(["Б", "Г", "", "Б,Д,А,А", "Г,Б,В"], ["Б", "А", "В", "Б,Д,В,А", "Г,Б,В"],
                kinds=["single", "single", "single", "matching", "matching"],
                subjects=["history", "history", "geo", "geo", "geo"], exams=["1", "1", "1", "2", "2"])
    # single: 1 of 3 right; matching: 3 of 4 rows + 3 of 3 rows: points 1 + 3 + 3 = 7 of 3 + 4 + 3 = 10
    assert m["accuracy"] == pytest.approx(1 / 3) and m["points"] == 7 and m["max_points"] == 10
    assert m["points_share"] == pytest.approx(0.7) and m["matching_row_accuracy"] == pytest.approx(6 / 7)
    assert m["unparsed"] == 1
    assert m["by_subject"]["geo"]["points"] == 6 and m["by_subject"]["history"]["accuracy"] == 0.5
    assert m["by_exam"]["2"]["max_points"] == 7
    # a partial matching answer: the rows it gives earn their points, the rows it leaves out none
    part = compute(["Б,Б,,", "Б,,,"], ["Б,Б,В,А", "А,Б,В,Г"], kinds=["matching", "matching"])
    assert part["points"] == 2 and part["max_points"] == 8 and part["unparsed"] == 0


def test_vote_and_look_alikes():
    assert normalize_letter("a") == "А" and normalize_letter("І") == "І" and normalize_letter("i") == "І"
    best, counts = vote([["Б"], None, ["В"], ["Б"], ["В"], ["В"]])
    assert best == ["В"] and counts[("В",)] == 3
    assert vote([None, None])[0] is None
    assert vote([["А"], ["Б"]])[0] == ["А"]  # a tie goes to the first seen


def test_targets_letters_cot_and_topic_with_a_rationale_file(tmp_path):
    from peft_apps.core.config import load_recipe
    from peft_apps.core.registry import get_app

    app = get_app("exam")
    rat = tmp_path / "r.jsonl"
    rat.write_text(json.dumps({"id": "0", "rationale": "Школярі: 15 · 20 = 300 грн. Разом 1250 грн."},
                              ensure_ascii=False) + "\n")
    recs = {t: app.read(MATH, load_recipe(app.recipe_path("demo"), [f"task.target={t}", f"task.rationales={rat}",
                                                                  "task.language=uk"]))
            for t in ("letters", "cot", "cot_topic")}
    assert recs["letters"][0].completion == "Відповідь: В"
    assert recs["cot"][0].completion == "Школярі: 15 · 20 = 300 грн. Разом 1250 грн.\nВідповідь: В"
    assert recs["cot_topic"][0].completion.startswith("ТЕМА: Алгебра і початки аналізу. Числа і вирази.")
    assert recs["cot_topic"][0].completion.endswith("Разом 1250 грн.\nВідповідь: В")
    matching = next(r for r in recs["letters"] if r.meta["kind"] == "matching")
    assert matching.completion == "Відповідь: 1-Г, 2-Б, 3-В"
    en = app.read(UNLP, load_recipe(app.recipe_path("demo"), ["task.language=en"]))
    assert en[0].completion == "Answer: А" and "Answer:" in en[0].prompt[-1]["content"]


@pytest.mark.slow
def test_tiny_train_eval_with_samples_predict_and_score(tmp_path):
    run = tmp_path / "run"
    cli = ["peft-apps"]
    p = run_cli(cli + ["train", "exam", "-r", "demo", "--target", "letters", "train.max_steps=2",
                       "data.limit_train=16", f"train.output_dir={run}"])
    assert p.returncode == 0, p.stderr[-2000:]
    p = run_cli(cli + ["eval", "exam", "--adapter", str(run), "--samples", "3", "eval.limit=4",
                       "eval.max_new_tokens=6"])
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((run / "eval_metrics.json").read_text())
    assert m["n"] == 4 and m["max_points"] >= 4 and 0 <= m["points"] <= m["max_points"]
    # the engine's prefix cache: each question's prompt looked up once (the samples share it), its blocks kept
    cache = m["prefix_cache"]
    assert cache["hits"] + cache["misses"] == 4 and cache["stored_blocks"] > 0 and cache["blocks"] > 0
    rows = [json.loads(x) for x in (run / "eval_predictions.jsonl").read_text().splitlines()]
    assert all(len(r["samples"]) == 3 and sum(r["votes"].values()) <= 3 for r in rows)
    p = run_cli(cli + ["score", "exam", "--gold", str(GEO), "--pred", str(run / "eval_predictions.jsonl"),
                       "--only-predicted", "-o", str(tmp_path / "s.json")])
    assert p.returncode == 0, p.stderr[-2000:]
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["points"] == m["points"] and s["max_points"] == m["max_points"]
    q = "Столиця України\nА) Київ\nБ) Львів\nВ) Одеса"
    p = run_cli(cli + ["predict", "exam", "--adapter", str(run), q])
    assert p.returncode == 0, p.stderr[-2000:]
    assert set(json.loads(p.stdout.splitlines()[0])) >= {"id", "output", "parsed"}
    # with --out, the run's counts beside the predictions: rows, the samples drawn, the prefix cache's
    out = tmp_path / "preds.jsonl"
    p = run_cli(cli + ["predict", "exam", "--adapter", str(run), q, "-o", str(out), "--samples", "3"])
    assert p.returncode == 0, p.stderr[-2000:]
    counts = json.loads((tmp_path / "preds.metrics.json").read_text())
    assert counts["n"] == 1 and counts["seconds"] > 0
    cache = counts["prefix_cache"]  # the three samples share the question's prompt: looked up and stored once
    assert cache["hits"] + cache["misses"] == 1 and cache["stored_blocks"] > 0, counts
    out.unlink()
    again = run_cli(cli + ["predict", "exam", "--adapter", str(run), q, "-o", str(out)])
    assert again.returncode == 2 and "already exists" in again.stderr and not out.exists()


def test_seeded_samples_equal_batched_or_one_call_at_a_time(tmp_path):
    from helpers.autore_fixtures import random_adapter
    from peft_apps.apps.exam import ExamSolver
    from peft_apps.core.registry import get_app

    ad = random_adapter(tmp_path / "ad")
    (ad / "recipe.yaml").write_text("app: exam\nmodel:\n  base: builtin:tiny\n  quantization: none\n"
                                    "  dtype: float32\neval:\n  max_new_tokens: 8\n  temperature: 1.0\n")
    solver = ExamSolver.from_pretrained(None, ad)
    recs = get_app("exam").read(UNLP, solver.recipe, labelled=False)[:2]
    together = solver.sample(recs, 4, seed=7)
    alone = solver.sample(recs, 4, seed=7, together=False)
    assert together == alone and len(set(together[0])) > 1


def test_answer_only_targets_are_a_training_warning_not_a_scoring_one(tmp_path):
    """A CoT target without a rationale concerns training: `convert` and `train` say so, `score` does not."""
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps({"id": i, "output": "Відповідь: А"}) + "\n" for i in range(40)))
    p = run_cli(["peft-apps", "score", "exam", "--gold", str(UNLP), "--pred", str(pred)])
    assert p.returncode == 0 and "rationale" not in p.stderr, p.stderr[-2000:]
    p = run_cli(["peft-apps", "convert", "exam", str(UNLP), "-o", str(tmp_path / "rec")])
    assert p.returncode == 0 and "40 of 40 question(s) with no rationale" in p.stderr, p.stderr[-2000:]
    assert json.loads((tmp_path / "rec" / "report.json").read_text())["answer_only_targets"] == 40


@pytest.mark.slow
def test_demo_learns_the_answer_format(tmp_path):
    """`peft-apps demo exam` on the tiny model: before training hardly an answer is readable; after it
    most are, nearly all of them the most common letter, and it scores within a question of what always
    giving the majority answer scores (the exact question it misses differs between CPUs)."""
    from collections import Counter

    p = run_cli(["peft-apps", "demo", "exam", "-o", str(tmp_path / "demo")])
    assert p.returncode == 0, p.stderr[-3000:]
    em = json.loads((tmp_path / "demo" / "eval_metrics.json").read_text())
    before, majority = em["baselines"]["before_training"], em["baselines"]["majority_answer"]
    assert before["unparsed"] >= em["n"] * 3 // 4 and em["unparsed"] <= em["n"] // 4, em
    rows = [json.loads(line) for line in (tmp_path / "demo" / "eval_predictions.jsonl").read_text().splitlines()]
    answers = Counter(r["parsed"] for r in rows if r["parsed"])
    assert answers.most_common(1)[0][1] >= 0.8 * sum(answers.values()), answers
    assert em["points_share"] >= majority["points_share"] - 1.01 / em["max_points"] and majority["points_share"] > 0


ORDERING = data_dir("exam", "zno-geography-ordering.json")
UKR_VAL = data_dir("exam", "zno-ukrainian-val.json")


def test_every_real_zno_layout_is_kept_and_every_task_accounted_for():
    """Matching rows listed among `answers`, numbered in the question text ("(1)word"), and ordering tasks
    ("Розташуйте ..."): all kept, with rows from answer_hheader; the rest skipped with what was seen."""
    ukr = load(UKR_VAL)  # NLPForUA/ZNO's split layout {"val": [task, ...]}
    assert ukr.tasks == 60 and len(ukr.questions) + sum(ukr.skipped.values()) == 60
    assert dict(ukr.skipped) == {"needs a picture": 12}
    words = [q for q in ukr.questions if q.layout == "in_question"]
    assert [q.task_id for q in words] == ["26", "26"] and [q.exam for q in words] == ["522", "545"]
    assert words[0].rows == [("1", "відомий"), ("2", "більше"), ("3", "досягнуті"), ("4", "цій")]
    assert words[0].letters == L5 and words[0].correct == ["Б", "Г", "В", "А"] and words[0].max_points == 4
    geo = load(ORDERING)
    assert geo.tasks == 116 and len(geo.questions) + sum(geo.skipped.values()) == 116
    order = [q for q in geo.questions if q.layout == "ordering"]
    assert len(order) == 10 and all(q.rows == [("1", ""), ("2", ""), ("3", ""), ("4", "")] for q in order)
    assert all(q.letters == ["А", "Б", "В", "Г"] and len(q.correct) == 4 for q in order)
    assert dict(geo.skipped) == {"needs a picture": 25, "no options (open answer)": 1}
    other = load(GEO)  # "choose three of seven" tasks whose correct answer the file does not give
    assert other.examples["no correct answer"][0].endswith("correct_answer is empty; options 1–7")


def test_ordering_and_marked_word_prompts_say_what_to_do():
    from peft_apps.core.config import load_recipe
    from peft_apps.core.registry import get_app

    app = get_app("exam")
    recipe = load_recipe(app.recipe_path("demo"), ["task.language=uk"])
    geo = {r.meta["task_id"]: r for r in app.read(ORDERING, recipe) if r.meta["kind"] == "matching"}
    order = next(r for r in geo.values() if "Розмістіть" in r.prompt[-1]["content"])
    text = order.prompt[-1]["content"]
    assert "на кожне місце 1–4 поставте одну букву з А, Б, В, Г" in text and "\n1. \n" not in text
    assert order.completion.startswith("Відповідь: 1-") and order.completion.count("-") == 4
    ukr = [r for r in app.read(UKR_VAL, recipe) if r.meta["task_id"] == "26"][0]
    assert "1. відомий\n2. більше\n" in ukr.prompt[-1]["content"]
    assert ukr.completion == "Відповідь: 1-Б, 2-Г, 3-В, 4-А"


def test_score_joins_by_id_and_leaves_out_predictions_for_skipped_tasks(tmp_path):
    """A prediction for every task of a real exam file (the ones that need a picture too): each lands on its
    own question, those for skipped tasks are left out and counted, none falls back to a position."""
    from peft_apps.apps.exam.data import answer_text

    loaded = load(UKR_VAL)
    by_id = {q.id: q for q in loaded.questions}
    pred = tmp_path / "pred.jsonl"
    rows = [{"id": i, "output": answer_text(by_id[str(i)]) if str(i) in by_id else "Відповідь: А"}
            for i in range(loaded.tasks)]
    pred.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    out = tmp_path / "m.json"
    p = run_cli(["peft-apps", "score", "exam", "--gold", str(UKR_VAL), "--pred", str(pred), "-o", str(out)])
    assert p.returncode == 0, p.stderr
    m = json.loads(out.read_text())
    assert m["n"] == 48 and m["points"] == m["max_points"] == 72 and m["missing_predictions"] == 0
    assert m["matched_by"] == "id" and m["predictions_for_skipped_records"] == {"needs a picture": 12}
    assert "12 prediction(s) left out" in p.stderr and "needs a picture" in p.stderr
    # only the prediction for a skipped question: left out, never scored against another question
    lone = tmp_path / "lone.jsonl"
    skipped_id = next(i for i in loaded.skipped_ids)
    lone.write_text(json.dumps({"id": int(skipped_id), "output": "Відповідь: А"}) + "\n")
    p = run_cli(["peft-apps", "score", "exam", "--gold", str(UKR_VAL), "--pred", str(lone), "-o",
                 str(tmp_path / "l.json")])
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "l.json").read_text())
    assert m["points"] == 0 and m["missing_predictions"] == 48 and m["predictions_for_skipped_records"] == {
        "needs a picture": 1}


# What NLPForUA/ZNO's own scorer gave: `compute_score({"pred": text}, None, len(correct), correct)` of
# tuning/tools/scoring.py (commit 35d4c976; max grade = the number of rows, as its Ukrainian exams' matching
# tasks are graded), run by hand over the questions of data/exam/zno-ukrainian-val.json that are kept, with
# the answers helpers/zno_variants.py writes: the total points of each variant.
OFFICIAL_ZNO_POINTS = {"right": 72, "wrong": 0, "one_off": 64, "first_rows": 16}


def test_exam_points_equal_the_zno_scoring_script(tmp_path):
    from helpers.zno_variants import variants

    loaded = load(UKR_VAL)
    for name, want in OFFICIAL_ZNO_POINTS.items():
        pred = tmp_path / f"{name}.jsonl"
        pred.write_text("".join(json.dumps({"id": q.id, "output": variants(q.correct, q.letters)[name]},
                                           ensure_ascii=False) + "\n" for q in loaded.questions))
        out = tmp_path / f"{name}.json"
        p = run_cli(["peft-apps", "score", "exam", "--gold", str(UKR_VAL), "--pred", str(pred), "-o", str(out)])
        assert p.returncode == 0, p.stderr
        assert json.loads(out.read_text())["points"] == want, name
