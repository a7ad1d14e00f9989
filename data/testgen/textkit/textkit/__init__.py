"""textkit: small text utilities (the sample project testgen's miner, sandbox and demo run on)."""

from .slug import slugify, truncate
from .stats import word_counts, reading_time

__all__ = ["slugify", "truncate", "word_counts", "reading_time"]
