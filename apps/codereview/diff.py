"""A unified diff -> the hunks a review looks at (parsed with `unidiff`).

Each hunk keeps its file path, its lines in the new file (where a comment is anchored), the text
CodeReviewer's records hold in `patch` (the @@ header and the ' '/'-'/'+' lines), and its enclosing
function or class (tree-sitter, from the file's old or new text when it can be read). Binary files,
renames without changes and deleted files have nothing to comment on: they are skipped and counted. A
hunk longer than `max_lines` is cut to that many lines, and the cut is noted in the output.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from peft_apps.core.errors import UserError

from .context import enclosing_scope, language_of_path


@dataclass
class Hunk:
    path: str  # the file's path in the new tree
    lang: str  # grammar name ("python", "java", ...) or the extension when unknown
    patch: str  # "@@ -a,b +c,d @@ ...\n" and the hunk's lines, as CodeReviewer's `patch`
    start_line: int  # first and last line of the change in the new file (added lines; else where lines went)
    end_line: int
    scope: str = ""
    truncated: bool = False
    lines: int = 0  # the hunk's lines before any cut
    new_start: int = 0  # the hunk's whole span in the new file (what a suggested revision replaces)
    new_end: int = 0
    added: list[tuple[int, str]] = field(default_factory=list)  # (new line number, text) of '+' lines
    removed: list[str] = field(default_factory=list)  # text of '-' lines

    @property
    def id(self) -> str:
        return f"{self.path}:{self.start_line}"


@dataclass
class ParsedDiff:
    hunks: list[Hunk]
    counts: Counter  # files, hunks, skipped_binary, skipped_rename_only, skipped_deleted, truncated


def parse_diff(text: str, source: str = "the diff", max_lines: int = 120,
               read_file: Callable[[str, str], str | None] | None = None) -> ParsedDiff:
    """The reviewable hunks of a unified diff. `read_file(path, side)` ("old" or "new") returns a file's
    text for the enclosing scope (None: unknown). An empty or malformed diff is a UserError naming
    `source`."""
    from unidiff import PatchSet
    from unidiff.errors import UnidiffParseError

    if not text.strip():
        raise UserError(f"{source} is empty: nothing to review",
                        hint="pass a unified diff (`git diff > change.diff`), or --git BASE..HEAD in a repository")
    try:
        patch = PatchSet(text)
    except UnidiffParseError as e:
        raise UserError(f"{source} is not a valid unified diff: {e}") from None
    if not len(patch):
        first = text.strip().splitlines()[0][:80]
        raise UserError(f"{source} holds no file diffs (first line: {first!r})",
                        hint="a unified diff starts with 'diff --git' or '--- a/FILE' / '+++ b/FILE' lines")
    counts: Counter = Counter()
    hunks: list[Hunk] = []
    for f in patch:
        counts["files"] += 1
        path = f.path
        if f.is_binary_file:
            counts["skipped_binary"] += 1
            continue
        if f.is_removed_file:
            counts["skipped_deleted"] += 1
            continue
        if not len(f):
            counts["skipped_rename_only" if f.is_rename else "skipped_no_change"] += 1
            continue
        lang = language_of_path(path) or Path(path).suffix.lstrip(".")
        old_text = new_text = None
        for h in f:
            counts["hunks"] += 1
            added = [(ln.target_line_no, ln.value.rstrip("\n")) for ln in h if ln.is_added]
            removed = [ln.value.rstrip("\n") for ln in h if ln.is_removed]
            if added:
                start, end = added[0][0], added[-1][0]
            else:  # a deletion: anchor on the new line where the removed lines were
                after = [ln.target_line_no for ln in h if ln.is_context and ln.target_line_no]
                first_removed = next(i for i, ln in enumerate(h) if ln.is_removed)
                before = [ln.target_line_no for ln in list(h)[:first_removed] if ln.is_context]
                start = end = max(1, before[-1] if before else (after[0] if after else h.target_start))
            body = [str(ln) for ln in h]
            truncated = len(body) > max_lines
            if truncated:
                counts["truncated"] += 1
                body = body[:max_lines]
            header = f"@@ -{h.source_start},{h.source_length} +{h.target_start},{h.target_length} @@"
            if h.section_header:
                header += f" {h.section_header}"
            text_patch = header + "\n" + "".join(b if b.endswith("\n") else b + "\n" for b in body)
            scope = ""
            if read_file is not None and language_of_path(path):
                if removed and old_text is None and not f.is_added_file:
                    old_text = read_file(f.source_file[2:] if f.source_file.startswith("a/") else f.source_file,
                                         "old") or ""
                if new_text is None:
                    new_text = read_file(path, "new") or ""
                changed_old = [ln.source_line_no for ln in h if ln.is_removed]
                if old_text and changed_old:
                    scope = enclosing_scope(old_text, lang, changed_old[0], changed_old[-1])
                if not scope and new_text:
                    scope = enclosing_scope(new_text, lang, start, end)
            if not scope and h.section_header:
                scope = h.section_header.strip()
            hunks.append(Hunk(path=path, lang=lang, patch=text_patch.rstrip("\n"), start_line=start, end_line=end,
                              scope=scope, truncated=truncated, lines=len(list(h)), added=added, removed=removed,
                              new_start=h.target_start, new_end=h.target_start + max(h.target_length, 1) - 1))
    counts["reviewed"] = len(hunks)
    return ParsedDiff(hunks, counts)


def files_from(root: Path) -> Callable[[str, str], str | None]:
    """Read a diff's files from a working tree (the new side only: the old one is not on disk)."""
    def read(path: str, side: str) -> str | None:
        if side != "new":
            return None
        p = root / path
        try:
            return p.read_text(encoding="utf-8", errors="replace") if p.is_file() else None
        except OSError:
            return None
    return read


def git(args: list[str], cwd: Path) -> str:
    try:
        p = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise UserError("git is not installed (needed for --git)") from None
    if p.returncode != 0:
        raise UserError(f"git {' '.join(args)} failed: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode}",
                        hint="--git takes a revision range inside a repository, e.g. --git main..HEAD or --git HEAD~1..HEAD")
    return p.stdout


def git_diff(rev_range: str, cwd: Path) -> tuple[str, Callable[[str, str], str | None]]:
    """The diff of a revision range (BASE..HEAD, or one revision for its parent..it) and a reader of the
    files on both sides, from git itself."""
    if ".." in rev_range:
        base, head = rev_range.split("..", 1)
        base, head = base or "HEAD", head or "HEAD"
    else:
        base, head = f"{rev_range}~1", rev_range
    inside = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=cwd, capture_output=True, text=True)
    if inside.returncode != 0:
        raise UserError(f"--git {rev_range}: {Path(cwd).resolve()} is not inside a git repository",
                        hint="run it in the repository, or pass --root REPO")
    for rev in (base, head):
        p = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=cwd,
                           capture_output=True, text=True)
        if p.returncode != 0:
            count = subprocess.run(["git", "rev-list", "--count", "HEAD"], cwd=cwd, capture_output=True, text=True)
            n = count.stdout.strip() if count.returncode == 0 else "no"
            raise UserError(f"--git {rev_range}: revision {rev!r} does not exist in this repository "
                            f"({n} commit(s) on HEAD)",
                            hint="name a revision the repository has: a branch, a tag, a commit, or HEAD~N with N "
                                 "below the number of commits")
    text = git(["diff", "--no-color", "--no-ext-diff", "-M", base, head], cwd)

    def read(path: str, side: str) -> str | None:
        rev = base if side == "old" else head
        p = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=cwd, capture_output=True, timeout=60)
        return p.stdout.decode("utf-8", "replace") if p.returncode == 0 else None
    return text, read
