"""testgen: the miner on a real small project, the sandbox's limits against hostile generated tests, the
keep/drop verdicts on hand-written candidates, syntactic validity and CodeBLEU on the real samples, the
execution metrics, `testgen generate --changed` on a git range, and a tiny train -> generate run."""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from peft_apps.apps.testgen.check import Checker
from peft_apps.apps.testgen.miner import mine
from peft_apps.apps.testgen.sandbox import Limits, Sandbox, bwrap_works
from peft_apps.apps.testgen.units import java_unit, python_body, syntax_valid
from peft_apps.core.resources import data_dir
from helpers.preloaded import run_cli

TEXTKIT = data_dir("testgen", "textkit")
SAMPLES = data_dir("testgen", "methods2test-sample.jsonl")
isolated = pytest.mark.skipif(not bwrap_works()[0], reason=f"bwrap cannot run here: {bwrap_works()[1]}")


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# ---- miner -------------------------------------------------------------------------------------------
def test_miner_pairs_tests_with_their_focal_functions(tmp_path):
    m = mine(TEXTKIT)
    got = {r["meta"]["test_function"]: (r["meta"]["focal_file"], r["meta"]["focal_function"]) for r in m.records}
    assert got == {  # by name (test_slugify_*), through a module import (stats.word_counts) and a re-export
        "test_slugify_joins_lower_case_words": ("textkit/slug.py", "slugify"),
        "test_slugify_drops_accents": ("textkit/slug.py", "slugify"),
        "test_truncate_short_text_is_unchanged": ("textkit/slug.py", "truncate"),
        "test_truncate_rejects_tiny_width": ("textkit/slug.py", "truncate"),
        "test_word_counts_ignores_case": ("textkit/stats.py", "word_counts")}
    r = next(r for r in m.records if r["meta"]["test_function"] == "test_truncate_rejects_tiny_width")
    assert r["prompt"].startswith("# module textkit.slug\ndef truncate(text, width, ellipsis=\"...\"):")
    assert r["prompt"].endswith("from textkit.slug import slugify, truncate\n\n\ndef test_truncate_rejects_tiny_width():\n")
    assert r["reference"] == "    with pytest.raises(ValueError):\n        truncate(\"anything\", 2)"
    assert r["meta"]["focal_lines"] == [15, 24]
    # a file that does not parse is reported and skipped; the rest is still mined
    copy = tmp_path / "proj"
    shutil.copytree(TEXTKIT, copy)
    (copy / "textkit" / "broken.py").write_text("def f(:\n    pass\n")
    m2 = mine(copy)
    assert m2.counts["pairs"] == 5 and m2.counts["files that do not parse"] == 1
    assert any("textkit/broken.py" in p for p in m2.problems)


def _mine_project(root, files: dict[str, str]):
    """Write a small project (relative path -> text), mine it: (test function -> focal function, counts)."""
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    m = mine(root)
    return {r["meta"]["test_function"]: r["meta"]["focal_function"] for r in m.records}, m.counts


def test_miner_resolves_module_attribute_calls_and_counts_unresolved(tmp_path):
    got, counts = _mine_project(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/mathx.py": "def double(x):\n    return 2 * x\n\ndef half(x):\n    return x / 2\n",
        "tests/test_m.py": "import pkg.mathx as mx\nfrom pkg import mathx\n\n"
                           "def test_double():\n    assert mx.double(2) == 4\n\n"
                           "def test_values():\n    assert mathx.half(4) == 2\n\n"
                           "def test_two():\n    assert mx.half(mx.double(3)) == 3\n\n"
                           "def test_nothing():\n    assert len('ab') == 2\n"})
    assert got == {"test_double": "double", "test_values": "half"}
    assert counts["ambiguous focal function"] == 1 and counts["no candidate"] == 1


def test_miner_never_takes_test_helpers_as_focal_functions(tmp_path):
    """Helpers in tests/ (a conftest, a helpers module) and the assertion helpers a package keeps beside its
    code (toolz's `utils.raises`) are test code: a test that calls only them has no focal function."""
    got, counts = _mine_project(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/core.py": "def curry(f):\n    return f\n",
        "pkg/utils.py": "def raises(err, lamda):\n    try:\n        lamda()\n        return False\n"
                        "    except err:\n        return True\n",
        "tests/__init__.py": "",
        "tests/helpers.py": "def make_thing():\n    return 1\n",
        "tests/test_core.py": "from pkg.core import curry\nfrom pkg.utils import raises\n"
                              "from tests.helpers import make_thing\n\n"
                              "def test_bad_input():\n    assert raises(TypeError, lambda: 1 + 'a')\n\n"
                              "def test_thing():\n    assert make_thing() == 1\n\n"
                              "def test_identity():\n    assert raises(TypeError, lambda: curry(1)(2)) and "
                              "curry(len)('ab') == 2\n"})
    assert got == {"test_identity": "curry"} and counts["no candidate"] == 2


# ---- units, syntax validity, CodeBLEU -----------------------------------------------------------------------
def test_java_unit_cuts_at_the_method_end_and_python_body_at_dedent():
    prompt = "class A {\n  int f() { return 1; }\n}\n\nclass ATest {\n\n\t@Test\n\tpublic void testF()\n\t{\n"
    unit = java_unit(prompt, "\t\tassertEquals(1, new A().f()); // }\n\t}\n\n\t@Test void more() {}\n}")
    assert unit.endswith("assertEquals(1, new A().f()); // }\n\t}\n}\n") and "more" not in unit
    assert syntax_valid("java", prompt, "\t\tassertEquals(1, x);\n\t}")
    assert not syntax_valid("java", prompt, "\t\tassertEquals(1, x);\n")  # the method never closes
    assert not syntax_valid("java", prompt, "\t\tassertEquals(1, x;\n\t}")
    assert not syntax_valid("java", prompt, "   ")
    assert python_body("    assert f(1) == 2\n\n    assert f(0) == 1\ndef other():\n    pass") == \
        "    assert f(1) == 2\n\n    assert f(0) == 1\n"
    assert syntax_valid("python", "from m import f\n\n\ndef test_f():\n", "    assert f(1) == 2\n")
    assert not syntax_valid("python", "def test_f():\n", "    assert f(1 == 2\n")
    assert not syntax_valid("python", "def test_f():\n", "x = 1\n")  # not indented: the body is empty


def test_syntax_validity_and_codebleu_on_the_real_samples():
    from peft_apps.apps.testgen.metrics.testgen import compute

    rows = _rows(SAMPLES)
    refs = [r["reference"] for r in rows]
    prompts = [r["prompt"] for r in rows]
    gold = compute(refs, refs, prompts, ["java"] * len(rows))
    assert gold["syntax_validity"] == 1.0 and gold["exact_match"] == 1.0
    assert gold["codebleu"] == pytest.approx(1.0, abs=1e-3) and gold["codebleu_syntax"] == pytest.approx(1.0)
    study = compute([r["prediction"] for r in rows], refs, prompts, ["java"] * len(rows))
    # the study's fully fine-tuned codegen-350M: most of its tests parse, few match the gold text
    invalid = sum(not syntax_valid("java", r["prompt"], r["prediction"]) for r in rows)
    assert study["syntax_validity"] == pytest.approx(1 - invalid / len(rows)) and 0 < invalid < len(rows) // 4
    assert 0.05 < study["codebleu"] < 0.5 and study["exact_match"] < 0.1
    he = _rows(data_dir("testgen", "humaneval-x-java-sample.jsonl"))
    m = compute([r["prediction"] for r in he], [r["reference"] for r in he], [r["prompt"] for r in he], ["java"] * len(he))
    assert m["syntax_validity"] > 0.85 and m["codebleu"] > study["codebleu"]


# What the `codebleu` package printed: `codebleu.calc_codebleu(refs, hyps, lang="java")` of codebleu 0.7.0 from
# PyPI (with the tree-sitter 0.22.3 and tree-sitter-java 0.21.0 it installs with), run by hand with
# PYTHONHASHSEED=1 on the bundled samples: the study's generated test methods against the gold ones, both
# cut by `units.method_text`. The package's data-flow part depends on Python's string hash seed (it walks
# sets): over seeds 0-3 it ranged 0.2384-0.2438 and 0.4753-0.4838 here, in the package and in the copy alike.
OFFICIAL_CODEBLEU = {
    "methods2test-sample.jsonl": {"codebleu": 0.1662, "ngram_match_score": 0.038381,
                                  "weighted_ngram_match_score": 0.040986, "syntax_match_score": 0.344555,
                                  "dataflow_match_score": 0.240876},
    "humaneval-x-java-sample.jsonl": {"codebleu": 0.387018, "ngram_match_score": 0.204722,
                                      "weighted_ngram_match_score": 0.347364, "syntax_match_score": 0.520668,
                                      "dataflow_match_score": 0.475317},
}


def test_codebleu_equals_the_codebleu_package():
    """The copy in metrics/codebleu/, run on tree-sitter 0.26 and this project's grammars under the same hash
    seed, gives the package's figures."""
    code = (
        "import json, sys\n"
        "from peft_apps.apps.testgen.metrics.codebleu import calc_codebleu\n"
        "from peft_apps.apps.testgen.units import method_text\n"
        "from peft_apps.core.resources import data_dir\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    rows = [json.loads(x) for x in data_dir('testgen', name).read_text().splitlines()]\n"
        "    hyps = [method_text('java', r['prompt'], r['prediction']) for r in rows]\n"
        "    refs = [method_text('java', r['prompt'], r['reference']) for r in rows]\n"
        "    out[name] = calc_codebleu(refs, hyps, lang='java')\n"
        "print(json.dumps(out))\n")
    p = subprocess.run([sys.executable, "-c", code, *OFFICIAL_CODEBLEU], capture_output=True, text=True,
                       env={**os.environ, "PYTHONHASHSEED": "1"}, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    for name, want in OFFICIAL_CODEBLEU.items():
        for k, v in want.items():
            assert got[name][k] == pytest.approx(v, abs=1e-6), (name, k)


def test_codebleu_by_hand_renaming_keeps_syntax_and_dataflow():
    from peft_apps.apps.testgen.metrics.codebleu import calc_codebleu

    s = calc_codebleu(["def f(a):\n    return a + 1\n"], ["def f(b):\n    return b + 1\n"], "python")
    assert s["syntax_match_score"] == 1.0 and s["dataflow_match_score"] == 1.0  # same tree, same flow
    assert s["ngram_match_score"] < 0.5  # the renamed tokens break most n-grams
    assert s["codebleu"] == pytest.approx(0.25 * (s["ngram_match_score"] + s["weighted_ngram_match_score"] + 2))


def test_codebleu_zero_data_flow_stays_zero_and_missing_data_flow_is_left_out():
    """An empty output scores 0 (the PyPI implementation would give it 0.25 for data flow); where no
    reference has a data flow the part is undefined and the other three carry the score."""
    from peft_apps.apps.testgen.metrics.testgen import compute

    prompts = ["class T {\n  void t() {\n"] * 2
    flow = ["    assertTrue(a.b());\n    assertNull(c);\n    assertFalse(d);\n  }",
            "    assertEquals(1, f());\n    assertEquals(2, g());\n  }"]
    empty = compute(["   ", ""], flow, prompts, ["java"] * 2)
    assert empty["codebleu"] == 0.0 and empty["codebleu_dataflow"] == 0.0 and empty["syntax_validity"] == 0.0
    no_flow = ["    fail();\n  }", "    assertTrue(true);\n  }"]
    same = compute(no_flow, no_flow, prompts, ["java"] * 2)
    assert same["codebleu_dataflow"] is None and same["codebleu_syntax"] == 1.0 and same["codebleu"] == pytest.approx(
        (same["codebleu_ngram"] + same["codebleu_weighted_ngram"] + same["codebleu_syntax"]) / 3)


# ---- sandbox limits ------------------------------------------------------------------------------------
def _hostile(checker, cases):
    items = [(f"tests/test_hostile_{name}.py", src) for name, src in cases.items()]
    return dict(zip(cases, checker.check_many(items, workers=2)))


@isolated
def test_sandbox_stops_hostile_generated_tests(tmp_path):
    """An infinite loop, a fork loop, a 10 GB allocation, a connect to a server on the host's 127.0.0.1 and a
    write into the user's home directory: each is stopped, and nothing reaches the host."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted = []

    def serve():
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                pass

    stop = threading.Event()
    threading.Thread(target=serve, daemon=True).start()
    probe = Path.home() / f"peft-apps-sandbox-probe-{uuid.uuid4().hex}"
    cases = {
        "loop": "def test_loop():\n    while True:\n        pass\n",
        "fork": "import os, time\n\ndef test_fork():\n    for _ in range(5000):\n        if os.fork() == 0:\n"
                "            time.sleep(30)\n            os._exit(0)\n",
        "memory": "def test_memory():\n    block = bytearray(10 * 2**30)\n    assert len(block)\n",
        "network": f"import socket\n\ndef test_network():\n    socket.create_connection(('127.0.0.1', {port}), timeout=3)\n",
        "home": f"def test_home():\n    open({str(probe)!r}, 'w').write('x')\n",
        "pid": "import os\n\ndef test_pid():\n    assert os.getpid() < 10 and 'CI_SECRET_TOKEN' not in os.environ\n",
    }
    os.environ["CI_SECRET_TOKEN"] = "do-not-leak"
    try:
        checker = Checker(TEXTKIT, Limits(timeout_s=8, cpu_s=20, memory_mb=1024, processes=48))
        v = _hostile(checker, cases)
    finally:
        os.environ.pop("CI_SECRET_TOKEN")
        stop.set()
    assert v["loop"].reason == "timeout" and v["loop"].duration < 12
    assert v["fork"].reason == "resource limit" and "Resource temporarily unavailable" in v["fork"].message
    assert v["memory"].reason == "resource limit" and "MemoryError" in v["memory"].message
    assert v["network"].reason == "failed" and not accepted  # refused in the sandbox's own network namespace
    assert v["home"].reason == "failed" and "Read-only file system" in v["home"].message and not probe.exists()
    assert v["pid"].status == "drop" and v["pid"].reason == "no coverage gain"  # it passed: PID < 10, no secret
    leftovers = subprocess.run(["pgrep", "-f", "test_hostile_fork"], capture_output=True, text=True).stdout.split()
    assert not leftovers  # the fork loop's sleepers died with the sandbox


def test_sandbox_shows_a_test_only_what_it_needs(tmp_path):
    """A generated test that reads a secret in the real home directory by its absolute path, looks for
    peft-apps' own checkout or /root, writes one huge file, or fills the disk with many files: the files
    are not there, the writes are stopped, and no secret comes back in the verdict."""
    secret = Path.home() / f".peft-apps-probe-{uuid.uuid4().hex}"
    secret.write_text("SECRET-VALUE-123")
    checkout = Path(__file__).resolve().parents[1] / "README.md"
    cases = {
        "secret": f"def test_secret():\n    assert open({str(secret)!r}).read() == 'x'\n",
        "checkout": f"import os\n\ndef test_checkout():\n    assert os.path.exists({str(checkout)!r})\n",
        "root": "import os\n\ndef test_root():\n    assert os.listdir('/root') == ['x'], os.listdir('/root')\n",
        "big_file": "def test_big():\n    with open('big.bin', 'wb') as f:\n        f.write(b'x' * (40 * 2**20))\n",
        "many_files": "import time\n\ndef test_many():\n    for i in range(40):\n"
                      "        open(f'f{i}.bin', 'wb').write(b'x' * (4 * 2**20))\n    time.sleep(3)\n",
        "long_message": "def test_long():\n    assert False, 'y' * 100000\n",
    }
    try:
        checker = Checker(TEXTKIT, Limits(timeout_s=20, cpu_s=20, memory_mb=1024, processes=48, file_mb=16,
                                          disk_mb=64))
        if not checker.sandbox.isolated:
            pytest.skip("bwrap cannot run here")
        v = _hostile(checker, cases)
    finally:
        secret.unlink()
    assert v["secret"].reason == "failed" and "No such file" in v["secret"].message
    assert all("SECRET-VALUE-123" not in x.message for x in v.values())
    assert v["checkout"].reason == "failed" and v["root"].reason == "failed"
    assert "'x'" in v["root"].message or "No such file" in v["root"].message
    assert v["big_file"].reason == "resource limit", (v["big_file"].reason, v["big_file"].message)
    assert v["many_files"].reason == "resource limit" and "more than 64 MB" in v["many_files"].message
    assert v["long_message"].reason == "failed" and len(v["long_message"].message) <= 800


def test_fallback_without_isolation_keeps_the_limits_and_says_so(tmp_path):
    box = Sandbox(TEXTKIT, Limits(timeout_s=3, memory_mb=512), isolate=False)
    assert not box.isolated
    r = box.run([sys.executable, "-c", "while True: pass"])
    assert r.timed_out and not r.isolated and r.duration < 6
    r = box.run([sys.executable, "-c", "b = bytearray(4 * 2**30)"])
    assert r.returncode != 0 and "MemoryError" in r.stderr


# ---- keep / drop -------------------------------------------------------------------------------------------
CANDIDATES = [
    ("textkit/stats.py::reading_time", "    assert reading_time('a b c', wpm=2) == 2\n    assert reading_time('') == 0\n"
                                       "    with pytest.raises(ValueError):\n        reading_time('a', wpm=0)\n"),
    ("textkit/stats.py::reading_time", "    assert reading_time('a b c') == 9\n"),  # wrong: fails
    ("textkit/stats.py::reading_time", "    assert reading_time('a b c', wpm=2) == 2\n"),  # covered by the first
    ("textkit/stats.py::reading_time", "    assert reading_time('a b c' == 9\n"),  # syntax error
    ("textkit/stats.py::reading_time", "    from textkit.stats import read_minutes\n    assert read_minutes('a')\n"),
    ("textkit/slug.py::slugify", "    assert slugify('A b') == 'a-b'\n"),  # passes, existing tests cover it
    ("textkit/slug.py::is_slug", "    while True:\n        pass\n"),  # hangs
    ("textkit/slug.py::is_slug", "def test_is_slug_cases():\n    assert is_slug('a-b')\n    assert not is_slug('')\n"),
]


def test_generate_keeps_passing_covering_tests_and_says_why_others_were_dropped(tmp_path):
    from peft_apps.apps.testgen.app import TestGenTask
    from peft_apps.apps.testgen.generate import patch, write
    from peft_apps.apps.testgen.pipeline import run

    project = tmp_path / "textkit"
    shutil.copytree(TEXTKIT, project)
    cands = tmp_path / "c.jsonl"
    cands.write_text("".join(json.dumps({"target": t, "test": s}) + "\n" for t, s in CANDIDATES))
    task = TestGenTask.model_validate({"sandbox": {"timeout_s": 8}})
    targets = sorted({t for t, _ in CANDIDATES})
    res = run(None, project, targets, None, None, cands, 2, None, task)
    reasons = {f.target: [c.verdict.reason for c in f.candidates] for f in res.functions}
    assert reasons == {
        "textkit/slug.py::is_slug": ["timeout", "passes and adds coverage"],
        "textkit/slug.py::slugify": ["no coverage gain"],
        "textkit/stats.py::reading_time": ["passes and adds coverage", "failed", "no coverage gain", "syntax error",
                                           "import error"]}
    gain = res.functions[2].candidates[0].verdict.coverage_gain
    assert gain["new_lines"]["textkit/stats.py"] == list(range(14, 21)) and gain["branches"] == 4  # its whole body
    assert set(res.written) == {"tests/test_slug_generated.py", "tests/test_stats_generated.py"}
    diff = patch(project, res.written)
    assert "+def test_reading_time_gen0():" in diff and "+def test_is_slug_cases_gen1():" in diff
    write(project, res.written)
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(project)})
    assert p.returncode == 0 and "7 passed" in p.stdout, p.stdout[-2000:]
    d = res.as_dict()
    assert d["counts"]["kept"] == 2 and d["counts"]["functions_with_kept_tests"] == 2
    assert d["counts"]["reasons"]["timeout"] == 1


def test_generate_changed_functions_in_a_git_range_and_a_project_without_tests(tmp_path):
    from peft_apps.apps.testgen.generate import changed_targets

    project = tmp_path / "p"
    shutil.copytree(TEXTKIT / "textkit", project / "textkit")
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=project, check=True)
    subprocess.run(git + ["add", "-A"], cwd=project, check=True)
    subprocess.run(git + ["commit", "-qm", "one"], cwd=project, check=True)
    stats = project / "textkit" / "stats.py"
    stats.write_text(stats.read_text().replace("return [w for w, _ in counts.most_common(n)]",
                                               "return [w for w, _ in counts.most_common(max(n, 0))]"))
    (project / "textkit" / "broken.py").write_text("def f(:\n")
    subprocess.run(git + ["add", "-A"], cwd=project, check=True)
    subprocess.run(git + ["commit", "-qm", "two"], cwd=project, check=True)
    problems = []
    ts = changed_targets(project, "HEAD~1..HEAD", problems)
    assert [t.id for t in ts] == ["textkit/stats.py::top_words"]
    assert problems == ["textkit/broken.py: does not parse; skipped"]
    cands = tmp_path / "c.jsonl"
    cands.write_text(json.dumps({"target": "textkit/stats.py::top_words",
                                 "test": "    assert top_words('b a b', n=1) == ['b']\n"}) + "\n")
    out = run_cli(["peft-apps", "testgen", "generate", "--changed",
                   "HEAD~1..HEAD", "--project", str(project), "--candidates", str(cands), "--write"])
    assert out.returncode == 0, out.stderr
    assert "kept 1 of 1" in out.stderr and "skipped: textkit/broken.py" in out.stderr
    written = project / "tests" / "test_stats_generated.py"  # no tests folder before: created
    assert "def test_top_words_gen0():" in written.read_text()


def test_check_command_prints_the_verdict_json(tmp_path):
    t = tmp_path / "test_new.py"
    t.write_text("from textkit.slug import is_slug\n\ndef test_is_slug():\n    assert is_slug('a-b')\n")
    p = run_cli(["peft-apps", "testgen", "check", "--project", str(TEXTKIT),
                 str(t)])
    assert p.returncode == 0, p.stderr
    v = json.loads(p.stdout)
    assert v["status"] == "keep" and v["reason"] == "passes and adds coverage" and v["duration"] > 0
    assert v["coverage_gain"]["new_lines"] == {"textkit/slug.py": [29, 31, 32]}  # not 30: `return False`
    bad = run_cli(["peft-apps", "testgen", "check", "--project", str(TEXTKIT),
                   str(tmp_path / "missing.py")])
    assert bad.returncode != 0 and "no such file" in bad.stderr and "Traceback" not in bad.stderr
    failing = tmp_path / "test_failing.py"
    failing.write_text("from textkit.slug import is_slug\n\ndef test_is_slug():\n    assert is_slug('A B')\n")
    p = run_cli(["peft-apps", "testgen", "check", "--project", str(TEXTKIT), str(failing)])
    assert p.returncode == 1 and json.loads(p.stdout)["status"] == "drop", p.stderr
    notpy = tmp_path / "hosts"
    notpy.write_text("127.0.0.1 localhost\n")
    p = run_cli(["peft-apps", "testgen", "check", "--project", str(TEXTKIT), str(notpy)])
    assert p.returncode == 2 and "not a Python file" in p.stderr and "Traceback" not in p.stderr
    p = run_cli(["peft-apps", "testgen", "check", "--project", str(TEXTKIT), "--timeout", "-1", str(t)])
    assert p.returncode == 2 and "--timeout" in p.stderr and "Traceback" not in p.stderr


# ---- execution metrics, tiny end to end --------------------------------------------------------------------
def test_execution_metrics_on_mined_pairs(tmp_path):
    from peft_apps.apps.testgen.app import execution_metrics
    from peft_apps.core.config import load_recipe
    from peft_apps.core.registry import get_app

    app = get_app("testgen")
    report = app.convert(TEXTKIT, tmp_path / "mined")  # a folder: pairs.jsonl + report.json
    pairs = tmp_path / "mined" / "pairs.jsonl"
    assert report["counts"]["pairs"] == 5 and (tmp_path / "mined" / "report.json").is_file()
    recipe = load_recipe(app.recipe_path("demo"))
    exs = app.read(pairs, recipe)
    gold = execution_metrics(exs, [ex.completion for ex in exs], app.task(recipe))
    assert gold["pass_rate"] == 1.0 and gold["execution_outcomes"] == {"passed": 5}
    assert 0 < gold["focal_line_coverage"] <= 1 and gold["focal_branch_coverage"] is not None
    wrong = [ex.completion.replace("==", "!=") if "==" in ex.completion else "    assert False" for ex in exs]
    bad = execution_metrics(exs, wrong, app.task(recipe))
    assert bad["pass_rate"] == 0.0 and bad["focal_line_coverage"] == 0.0


@pytest.mark.slow
def test_tiny_train_then_generate(tmp_path):
    run_dir = tmp_path / "run"
    p = run_cli(["peft-apps", "train", "testgen", "-r", "demo",
                 "train.max_steps=2", "data.limit_train=8", "data.limit_eval=2", f"train.output_dir={run_dir}"])
    assert p.returncode == 0, p.stderr[-3000:]
    project = tmp_path / "textkit"
    shutil.copytree(TEXTKIT, project)
    rep = tmp_path / "report.json"
    p = run_cli(["peft-apps", "testgen", "generate", "textkit/slug.py::is_slug",
                 "--project", str(project), "--adapter", str(run_dir), "--n", "2", "-o", str(rep),
                 "task.max_new_tokens=16", "sandbox.timeout_s=10"])
    assert p.returncode == 0, p.stderr[-3000:]
    d = json.loads(rep.read_text())
    assert d["counts"]["functions"] == 1 and d["counts"]["candidates"] == 2
    assert all(c["verdict"]["reason"] for c in d["functions"][0]["candidates"])


def test_an_interpreter_under_tmp_stays_visible_in_the_sandbox(monkeypatch, tmp_path):
    """A CI checkout or virtual environment under /tmp is hidden by the sandbox's private /tmp unless
    bound back: the interpreter's prefix and site-packages are bound read-only after the tmpfs."""
    from peft_apps.apps.testgen import sandbox

    venv = Path("/tmp") / f"peft-apps-venv-{uuid.uuid4().hex[:8]}"
    (venv / "lib" / "site-packages").mkdir(parents=True)
    try:
        monkeypatch.setattr(sys, "prefix", str(venv))
        paths = sandbox.interpreter_paths()
        assert str(venv) in paths and str(venv / "lib" / "site-packages") not in paths  # inside one bound
        cmd = Sandbox(TEXTKIT)._command(tmp_path, ["true"], tmp_path)
        if cmd[0] != "true":  # isolated: bound after the tmpfs that would hide it
            assert cmd.index(str(venv)) > cmd.index("--tmpfs")
    finally:
        shutil.rmtree(venv, ignore_errors=True)


def test_generated_tests_go_where_pytest_collects_them(tmp_path):
    """A project whose pytest configuration collects from `checks/` files named `*_check.py` gets its
    generated tests there, under such a name; without configuration, tests/ and test_<module>_generated.py."""
    from peft_apps.apps.testgen.generate import generated_file_name, tests_dir

    assert tests_dir(tmp_path) == tmp_path / "tests" and generated_file_name(tmp_path, "slug") == "test_slug_generated.py"
    (tmp_path / "pyproject.toml").write_text('[tool.pytest.ini_options]\ntestpaths = ["checks"]\n'
                                            'python_files = ["*_check.py"]\n')
    assert tests_dir(tmp_path) == tmp_path / "checks" and generated_file_name(tmp_path, "slug") == "slug_generated_check.py"
    (tmp_path / "pytest.ini").write_text("[pytest]\ntestpaths = spec\n")  # pytest.ini comes first
    assert tests_dir(tmp_path) == tmp_path / "spec" and generated_file_name(tmp_path, "slug") == "test_slug_generated.py"


def test_generate_with_the_base_model_alone_judges_its_candidates(tmp_path):
    """`--model BASE` without an adapter: the untrained base, zero-shot (the quality table's base row); without
    either, one message naming both ways."""
    project = tmp_path / "textkit"
    shutil.copytree(TEXTKIT, project)
    report = tmp_path / "base.json"
    p = run_cli(["peft-apps", "testgen", "generate", "--project", str(project), "textkit/stats.py::reading_time",
                 "--model", "builtin:tiny", "--n", "2", "-o", str(report), "task.max_new_tokens=16"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    counts = json.loads(report.read_text())["counts"]
    assert counts["functions"] == 1 and counts["candidates"] == 2 and sum(counts["reasons"].values()) == 2, counts
    p = run_cli(["peft-apps", "testgen", "generate", "--project", str(project), "textkit/stats.py"], cwd=tmp_path)
    assert p.returncode == 2 and "no adapter given" in p.stderr and "--model BASE alone" in p.stderr, p.stderr[-2000:]
