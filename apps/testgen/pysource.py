"""Python source through tree-sitter: functions and methods with their lines, test functions, imports,
calls, and syntax validity (no ERROR or MISSING node). Shared by the miner, `testgen generate` (which
functions a diff touched) and the syntactic-validity metric."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field


@functools.lru_cache(maxsize=None)
def parser(lang: str = "python"):
    from tree_sitter import Language, Parser

    if lang == "python":
        import tree_sitter_python as grammar
    elif lang == "java":
        import tree_sitter_java as grammar
    else:
        raise ValueError(f"no grammar for {lang!r}")
    return Parser(Language(grammar.language()))


def parse(text: str, lang: str = "python"):
    return parser(lang).parse(text.encode("utf-8"))


def syntax_errors(text: str, lang: str = "python") -> int:
    """ERROR and MISSING nodes in the parse of `text` (0: syntactically valid)."""
    tree = parse(text, lang)
    if not tree.root_node.has_error:
        return 0
    n, stack = 0, [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            n += 1
        if node.has_error:
            stack.extend(node.children)
    return max(n, 1)


@dataclass
class Function:
    name: str
    qualname: str  # Class.method for methods
    start_line: int  # 1-based, the `def` line (decorators not included)
    end_line: int
    source: str  # the definition, decorators included, dedented to column 0
    class_name: str | None = None
    calls: set[str] = field(default_factory=set)  # names called in the body: f(...), x.f(...) -> "f"
    call_roots: set[str] = field(default_factory=set)  # x in x.f(...), f in f(...)

    @property
    def is_test(self) -> bool:
        return self.name.startswith("test") and (self.class_name is None or self.class_name.startswith("Test"))


def _text(node) -> str:
    return node.text.decode("utf-8", "replace")


def _dedent(src: str, col: int) -> str:
    lines = src.split("\n")
    return "\n".join([lines[0]] + [ln[col:] if ln[:col].strip() == "" else ln.lstrip() for ln in lines[1:]])


def functions(text: str) -> list[Function]:
    """Top-level functions and methods of top-level classes (nested functions belong to their parent)."""
    root = parse(text).root_node
    out: list[Function] = []

    def add(defn, outer, cls: str | None):
        name = _text(defn.child_by_field_name("name"))
        calls, roots = set(), set()
        stack = [defn.child_by_field_name("body")]
        while stack:
            n = stack.pop()
            if n is None:
                continue
            if n.type == "call":
                fn = n.child_by_field_name("function")
                if fn is not None and fn.type == "identifier":
                    calls.add(_text(fn))
                    roots.add(_text(fn))
                elif fn is not None and fn.type == "attribute":
                    calls.add(_text(fn.child_by_field_name("attribute")))
                    obj = fn.child_by_field_name("object")
                    while obj is not None and obj.type == "attribute":
                        obj = obj.child_by_field_name("object")
                    if obj is not None and obj.type == "identifier":
                        roots.add(_text(obj))
            stack.extend(n.children)
        src = _dedent(_text(outer), outer.start_point[1])
        out.append(Function(name, f"{cls}.{name}" if cls else name, defn.start_point[0] + 1, defn.end_point[0] + 1,
                            src, cls, calls, roots))

    def defs(block, cls: str | None):
        for child in block.children:
            node = child.child_by_field_name("definition") if child.type == "decorated_definition" else child
            if node is None:
                continue
            if node.type == "function_definition":
                add(node, child, cls)
            elif node.type == "class_definition" and cls is None:
                body = node.child_by_field_name("body")
                if body is not None:
                    defs(body, _text(node.child_by_field_name("name")))

    defs(root, None)
    return out


def imports(text: str) -> dict[str, tuple[str, str | None]]:
    """Local name -> (module, attribute or None): `from a.b import c as d` -> d: ("a.b", "c");
    `import a.b as m` -> m: ("a.b", None); `import a.b` -> a: ("a", None). Relative modules keep their dots."""
    out: dict[str, tuple[str, str | None]] = {}
    for node in parse(text).root_node.children:
        if node.type == "import_statement":
            for n in node.named_children:
                if n.type == "aliased_import":
                    out[_text(n.child_by_field_name("alias"))] = (_text(n.child_by_field_name("name")), None)
                elif n.type == "dotted_name":
                    mod = _text(n)
                    out[mod.split(".")[0]] = (mod.split(".")[0], None)
        elif node.type == "import_from_statement":
            mod_node = node.child_by_field_name("module_name")
            mod = _text(mod_node) if mod_node is not None else ""
            for n in node.children_by_field_name("name"):
                if n.type == "aliased_import":
                    out[_text(n.child_by_field_name("alias"))] = (mod, _text(n.child_by_field_name("name")))
                else:
                    out[_text(n)] = (mod, _text(n))
    return out


def import_block(text: str) -> str:
    """The module's top-level import statements, in order (what a generated test file starts from)."""
    root = parse(text).root_node
    return "\n".join(_text(n) for n in root.children if n.type in ("import_statement", "import_from_statement",
                                                                      "future_import_statement"))


def header(text: str, fn: Function) -> str:
    """What a prompt shows of a focal function's surroundings: the class line of a method."""
    if fn.class_name is None:
        return ""
    for node in parse(text).root_node.children:
        node = node.child_by_field_name("definition") if node.type == "decorated_definition" else node
        if node is not None and node.type == "class_definition" and _text(node.child_by_field_name("name")) == fn.class_name:
            return _text(node).split("\n", 1)[0]
    return ""
