"""Runs inside the sandbox (by path, with the project's copy as the working directory): pytest over the
given test files under coverage (lines and branches), then one JSON file with what happened.

    python _runner.py OUT.json SOURCE_DIR [SOURCE_DIR ...] -- PYTEST_ARGS ...

OUT.json: {"exit_code", "tests": [{"nodeid", "outcome", "message"}], "collect_errors": [{"nodeid",
"message"}], "coverage": coverage.py's JSON report (per file: executed/missing lines and branches)}.
Imports only pytest and coverage, so it runs wherever the project's tests run.
"""

import json
import os
import sys


class Collector:
    """Test outcomes and collection errors; coverage runs from session start (after pytest's own start-up
    and its plugins, which need no tracing) to session end."""

    def __init__(self, cov):
        self.cov = cov
        self.tests, self.collect_errors = [], []

    def pytest_sessionstart(self, session):
        self.cov.start()

    def pytest_sessionfinish(self, session, exitstatus):
        self.cov.stop()

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.outcome != "passed":
            msg = "" if report.passed else _short(report.longreprtext)
            self.tests.append({"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
                               "message": msg})

    def pytest_collectreport(self, report):
        if report.failed:
            self.collect_errors.append({"nodeid": report.nodeid, "message": _short(report.longreprtext)})


def _short(text: str, limit: int = 1500) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def main() -> int:
    args = sys.argv[1:]
    out, sep = args[0], args.index("--")
    sources, pytest_args = args[1:sep], args[sep + 1:]
    import coverage
    import pytest

    cov_file = os.path.join(os.environ.get("TMPDIR", "/tmp"), ".coverage-runner")
    cov = coverage.Coverage(data_file=cov_file, branch=True, source=sources or None,
                            omit=["*/test_*.py", "*_test.py", "*/tests/*", "*/conftest.py"])
    collector = Collector(cov)
    code = pytest.main(["-q", "-p", "no:cacheprovider", "-p", "no:randomly", *pytest_args], plugins=[collector])
    report_path = out + ".cov.json"
    try:
        cov.json_report(outfile=report_path, ignore_errors=True)  # a file that does not parse
        with open(report_path, encoding="utf-8") as f:
            report = json.load(f)
    except coverage.exceptions.NoDataError:
        report = {"files": {}}
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"exit_code": int(code), "tests": collector.tests, "collect_errors": collector.collect_errors,
                   "coverage": {k: {"executed_lines": v["executed_lines"], "missing_lines": v["missing_lines"],
                                    "executed_branches": v.get("executed_branches", []),
                                    "missing_branches": v.get("missing_branches", [])}
                                for k, v in ((os.path.relpath(k), v) for k, v in report.get("files", {}).items())}},
                  f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
