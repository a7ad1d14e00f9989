"""A diff hunk's enclosing function or class, found with tree-sitter.

The grammars are the per-language PyPI wheels (`tree-sitter-python`, `-java`, `-go`, `-javascript`,
`-typescript`, `-c`, `-cpp`, `-c-sharp`, `-ruby`, `-php`): `tree-sitter-language-pack` downloads its
grammars at run time, which fails offline. A language whose wheel is missing has no scope (the hunk
header's own section text is used instead).

The scope is the chain of definitions around a line, outermost first, each as its first source line:
`class Signer: > def sign(self, value):`. Training prompts (from CodeReviewer's `oldf`) and review
prompts (from the files a diff touches) get it the same way.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from pathlib import PurePosixPath

# CodeReviewer's `lang` values and file extensions -> grammar name
LANGUAGES = {"py": "python", "python": "python", "java": "java", "go": "go", "js": "javascript",
             "javascript": "javascript", "jsx": "javascript", "mjs": "javascript", "cjs": "javascript",
             "ts": "typescript", "typescript": "typescript", "tsx": "tsx", "c": "c", "h": "c", "cpp": "cpp",
             "cc": "cpp", "cxx": "cpp", "hpp": "cpp", "hh": "cpp", "c++": "cpp", "cs": "c_sharp", "c#": "c_sharp",
             "csharp": "c_sharp", "c_sharp": "c_sharp", "rb": "ruby", "ruby": "ruby", "php": "php"}

# grammar -> (module, function returning the language)
_GRAMMARS = {"python": ("tree_sitter_python", "language"), "java": ("tree_sitter_java", "language"),
             "go": ("tree_sitter_go", "language"), "javascript": ("tree_sitter_javascript", "language"),
             "typescript": ("tree_sitter_typescript", "language_typescript"),
             "tsx": ("tree_sitter_typescript", "language_tsx"), "c": ("tree_sitter_c", "language"),
             "cpp": ("tree_sitter_cpp", "language"), "c_sharp": ("tree_sitter_c_sharp", "language"),
             "ruby": ("tree_sitter_ruby", "language"), "php": ("tree_sitter_php", "language_php")}

_JS = {"function_declaration", "generator_function_declaration", "class_declaration", "method_definition"}
DEFINITIONS = {
    "python": {"function_definition", "class_definition"},
    "java": {"class_declaration", "interface_declaration", "enum_declaration", "record_declaration",
             "method_declaration", "constructor_declaration"},
    "go": {"function_declaration", "method_declaration", "type_declaration"},
    "javascript": _JS,
    "typescript": _JS | {"interface_declaration", "abstract_class_declaration", "function_signature"},
    "tsx": _JS | {"interface_declaration", "abstract_class_declaration"},
    "c": {"function_definition", "struct_specifier"},
    "cpp": {"function_definition", "class_specifier", "struct_specifier", "namespace_definition"},
    "c_sharp": {"class_declaration", "interface_declaration", "struct_declaration", "record_declaration",
                "namespace_declaration", "method_declaration", "constructor_declaration", "property_declaration"},
    "ruby": {"method", "singleton_method", "class", "module"},
    "php": {"function_definition", "method_declaration", "class_declaration", "interface_declaration",
            "trait_declaration"},
}
MAX_SIGNATURE = 160


def language_of_path(path: str) -> str | None:
    """The grammar for a file name, from its extension (None: not a language the scope finder knows)."""
    suffix = PurePosixPath(path).suffix.lstrip(".").lower()
    return LANGUAGES.get(suffix)


@lru_cache(maxsize=None)
def parser_for(lang: str):
    """A tree-sitter parser for `lang`, or None when its grammar wheel is not installed."""
    spec = _GRAMMARS.get(lang)
    if spec is None:
        return None
    try:
        from tree_sitter import Language, Parser

        module = importlib.import_module(spec[0])
    except ImportError:
        return None
    return Parser(Language(getattr(module, spec[1])()))


def available_languages() -> list[str]:
    return [lang for lang in _GRAMMARS if parser_for(lang) is not None]


def enclosing_scope(source: str, lang: str, first_line: int, last_line: int | None = None) -> str:
    """The definitions around 1-based lines first_line..last_line of `source`, outermost first, joined by
    " > " (each its first line); "" when there are none or the language has no grammar here."""
    parser = parser_for(LANGUAGES.get(lang, lang))
    if parser is None or first_line < 1:
        return ""
    kinds = DEFINITIONS[LANGUAGES.get(lang, lang)]
    tree = parser.parse(source.encode("utf-8", "replace"))
    last = max(first_line, last_line or first_line)
    node = tree.root_node.descendant_for_point_range((first_line - 1, 0), (last - 1, 0))
    chain = []
    while node is not None:
        if node.type in kinds:
            chain.append(signature(node.text.decode("utf-8", "replace")))
        node = node.parent
    return " > ".join(reversed(chain))


def signature(text: str) -> str:
    """A definition's first line, past annotations and decorators; a bare return type line (C's
    `gboolean` above the name) is joined with the next."""
    lines = [x.strip() for x in text.split("\n") if x.strip()]
    while len(lines) > 1 and lines[0].startswith("@"):
        lines.pop(0)
    sig = lines[0] if lines else ""
    if len(lines) > 1 and not any(c in sig for c in "({:") and len(sig) < 40:
        sig = f"{sig} {lines[1]}"
    return sig[:MAX_SIGNATURE]
