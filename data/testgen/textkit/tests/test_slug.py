import pytest

from textkit.slug import slugify, truncate


def test_slugify_joins_lower_case_words():
    assert slugify("Hello, World!") == "hello-world"


def test_slugify_drops_accents():
    assert slugify("Crème brûlée") == "creme-brulee"


def test_truncate_short_text_is_unchanged():
    assert truncate("short", 10) == "short"


def test_truncate_rejects_tiny_width():
    with pytest.raises(ValueError):
        truncate("anything", 2)
