"""From model text to a test: strip a Markdown fence, cut the completion where the test method ends, and
put it back under its signature, in Java or Python. What the metrics parse and what the sandbox runs."""

from __future__ import annotations

import re

from . import pysource

_FENCE = re.compile(r"```[\w+-]*\n(.*?)(```|$)", re.S)
_JAVA_CLASS = re.compile(r"^[ \t]*(?:(?:public|protected|private|final|abstract|static)\s+)*class\s+\w+[^\n]*$", re.M)


def clean(output: str) -> str:
    """The code in a model's answer: the first fenced block if there is one, else the text itself."""
    m = _FENCE.search(output)
    return m.group(1) if m else output


def _java_scan(text: str, depth: int) -> tuple[int, int | None]:
    """Brace depth after `text` (strings, chars and comments skipped), and the index just past the brace
    that brings the depth down to 1 (a method closed inside its class), if any."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
            continue
        if c in "\"'":
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 1:
                return depth, i + 1
        i += 1
    return depth, None


def java_unit(prompt: str, completion: str) -> str:
    """The test class as far as the model wrote it: from the prompt's last class header, the completion
    cut where the test method closes, and the class's closing brace. An unfinished method is left
    unfinished (it does not parse)."""
    starts = list(_JAVA_CLASS.finditer(prompt))
    head = prompt[starts[-1].start():] if starts else prompt
    depth, _ = _java_scan(head, 0)
    depth_after, cut = _java_scan(completion, depth)
    if cut is not None:
        return head + completion[:cut] + "\n}\n"
    return head + completion


def java_method(prompt: str, completion: str) -> str:
    """Only the test method's own text after its signature (what CodeBLEU compares)."""
    starts = list(_JAVA_CLASS.finditer(prompt))
    head = prompt[starts[-1].start():] if starts else prompt
    depth, _ = _java_scan(head, 0)
    _, cut = _java_scan(completion, depth)
    return completion[:cut] if cut is not None else completion


def python_body(completion: str, indent: int = 0) -> str:
    """The completion up to the end of the function: the first non-blank line indented no deeper than
    the `def` (`indent` columns) ends it."""
    lines = completion.split("\n")
    out = []
    for i, line in enumerate(lines):
        if line.strip() and len(line) - len(line.lstrip()) <= indent and i > 0 or (
                i == 0 and line.strip() and not line.startswith((" ", "\t"))):
            break
        out.append(line)
    return "\n".join(out).rstrip() + "\n"


def python_signature(prompt: str) -> tuple[str, str]:
    """(text before the test's signature, the signature: decorators and the `def ...:` line(s))."""
    lines = prompt.rstrip("\n").split("\n")
    i = len(lines) - 1
    while i > 0 and not lines[i].lstrip().startswith(("def ", "async def ")):
        i -= 1
    while i > 0 and lines[i - 1].lstrip().startswith("@"):
        i -= 1
    return "\n".join(lines[:i]) + "\n", "\n".join(lines[i:]) + "\n"


def python_unit(prompt: str, completion: str, imports: str | None = None) -> str:
    """A test module: the imports (given, or the prompt's), the signature, the completion's body."""
    before, sig = python_signature(prompt)
    indent = len(sig) - len(sig.lstrip())
    head = imports if imports is not None else pysource.import_block(before)
    return (head.rstrip() + "\n\n\n" if head.strip() else "") + sig + python_body(completion, indent)


def unit(lang: str, prompt: str, output: str) -> str:
    text = clean(output)
    return java_unit(prompt, text) if lang == "java" else python_unit(prompt, text)


def method_text(lang: str, prompt: str, output: str) -> str:
    text = clean(output)
    if lang == "java":
        return java_method(prompt, text)
    _, sig = python_signature(prompt)
    return python_body(text, len(sig) - len(sig.lstrip()))


def syntax_valid(lang: str, prompt: str, output: str) -> bool:
    """Whether the completed test parses with no ERROR or MISSING node (tree-sitter), and is not empty."""
    if not method_text(lang, prompt, output).strip():
        return False  # nothing of the test's own (a Python body cut to nothing parses as `def f():` alone)
    return pysource.syntax_errors(unit(lang, prompt, output), lang) == 0
