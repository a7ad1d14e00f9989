from collections import Counter

from .slug import slugify


def word_counts(text, ignore_case=True):
    """Count each word (letters and digits) in `text`."""
    words = slugify(text, sep=" ").split() if ignore_case else text.split()
    return Counter(words)


def reading_time(text, wpm=200):
    """Minutes to read `text` at `wpm` words per minute, rounded up, at least 1 for non-empty text."""
    if wpm <= 0:
        raise ValueError("wpm must be positive")
    n = len(text.split())
    if n == 0:
        return 0
    minutes = -(-n // wpm)
    return max(1, minutes)


def top_words(text, n=3):
    """The `n` most common words, most common first (ties: first seen first)."""
    counts = word_counts(text)
    return [w for w, _ in counts.most_common(n)]
