"""A review as people and CI read it: markdown, JSON, reviewdog's rdjsonl and SARIF 2.1.0.

- rdjsonl: one reviewdog Diagnostic per line (`reviewdog -f=rdjsonl -reporter=github-pr-review`), each
  comment at its hunk's added lines, the refined code as a suggestion with `--suggest`.
- SARIF 2.1.0: one result per comment (rule `review-comment`), the suggestion as a fix; GitHub code
  scanning and most CI dashboards read it.
"""

from __future__ import annotations

import json
from typing import Any

from .pipeline import HunkReview, Review

TOOL = "peft-apps codereview"
RULE = "review-comment"
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"


def _message(h: HunkReview) -> str:
    return h.comment or "this change may need a reviewer's attention (the model gave no comment text)"


def to_json(review: Review) -> str:
    return json.dumps({"counts": review.counts, "notes": review.notes,
                       "hunks": [{k: v for k, v in h.as_dict().items() if k != "patch"} for h in review.hunks]},
                      indent=2, ensure_ascii=False)


def to_markdown(review: Review) -> str:
    c = review.counts
    lines = [f"# Code review: {len(review.comments)} comment{'' if len(review.comments) == 1 else 's'} on "
             f"{c.get('reviewed', len(review.hunks))} hunk{'' if c.get('reviewed', 0) == 1 else 's'}", ""]
    skipped = {k: v for k, v in c.items() if k.startswith("skipped_") and v}
    if skipped:
        lines += ["Skipped: " + ", ".join(f"{v} {k.removeprefix('skipped_').replace('_', ' ')}" for k, v in skipped.items()),
                  ""]
    for note in review.notes:
        lines.append(f"> note: {note}")
    if review.notes:
        lines.append("")
    for h in review.comments:
        where = f"{h.path}:{h.start_line}" + (f"-{h.end_line}" if h.end_line != h.start_line else "")
        lines += [f"## `{where}`" + (f" in `{h.scope}`" if h.scope else ""), "", _message(h), ""]
        if h.suggestion is not None:
            lines += ["Suggested revision:", "", f"```{h.lang}", h.suggestion, "```", ""]
    if not review.comments:
        lines.append("No hunk needs a comment.")
    return "\n".join(lines).rstrip("\n") + "\n"


def _diagnostic(h: HunkReview) -> dict[str, Any]:
    d: dict[str, Any] = {
        "message": _message(h),
        "location": {"path": h.path, "range": {"start": {"line": h.start_line}, "end": {"line": h.end_line}}},
        "severity": "INFO",
        "source": {"name": TOOL},
        "code": {"value": RULE},
    }
    if h.suggestion is not None:
        d["suggestions"] = [{"range": {"start": {"line": h.new_start}, "end": {"line": h.new_end}},
                             "text": h.suggestion}]
    return d


def to_rdjsonl(review: Review) -> str:
    return "".join(json.dumps(_diagnostic(h), ensure_ascii=False) + "\n" for h in review.comments)


def to_sarif(review: Review) -> str:
    results = []
    for h in review.comments:
        r: dict[str, Any] = {
            "ruleId": RULE,
            "level": "note",
            "message": {"text": _message(h)},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": h.path},
                                                "region": {"startLine": h.start_line, "endLine": h.end_line}}}],
        }
        if h.scope:
            r["locations"][0]["logicalLocations"] = [{"fullyQualifiedName": h.scope}]
        if h.suggestion is not None:
            r["fixes"] = [{"description": {"text": "revised as the comment asks"},
                           "artifactChanges": [{"artifactLocation": {"uri": h.path}, "replacements": [{
                               "deletedRegion": {"startLine": h.new_start, "endLine": h.new_end},
                               "insertedContent": {"text": h.suggestion + "\n"}}]}]}]
        results.append(r)
    log = {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [{
        "tool": {"driver": {"name": TOOL,
                            "rules": [{"id": RULE, "shortDescription": {"text": "a change a reviewer would comment on"}}]}},
        "results": results,
        "properties": {"counts": review.counts, "notes": review.notes}}]}
    return json.dumps(log, indent=2, ensure_ascii=False) + "\n"


FORMATS = {"markdown": to_markdown, "json": to_json, "rdjsonl": to_rdjsonl, "sarif": to_sarif}
