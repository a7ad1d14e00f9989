# Copyright (c) Microsoft Corporation.
# Licensed under the MIT license.

from .DFG import (
    DFG_csharp,
    DFG_go,
    DFG_java,
    DFG_javascript,
    DFG_php,
    DFG_python,
    DFG_ruby,
    DFG_rust,
)
from .utils import (
    index_to_code_token,
    remove_comments_and_docstrings,
    tree_to_token_index,
    tree_to_variable_index,
)

__all__ = [
    "DFG_csharp",
    "DFG_go",
    "DFG_java",
    "DFG_javascript",
    "DFG_php",
    "DFG_python",
    "DFG_ruby",
    "DFG_rust",
    "index_to_code_token",
    "remove_comments_and_docstrings",
    "tree_to_token_index",
    "tree_to_variable_index",
]
