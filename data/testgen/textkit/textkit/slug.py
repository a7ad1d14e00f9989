import re
import unicodedata


def slugify(text, sep="-", max_length=None):
    """URL slug: ASCII letters and digits, words joined by `sep`, lower case."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    words = re.findall(r"[a-zA-Z0-9]+", text.lower())
    slug = sep.join(words)
    if max_length is not None and len(slug) > max_length:
        slug = slug[:max_length].rstrip(sep)
    return slug


def truncate(text, width, ellipsis="..."):
    """Cut `text` to at most `width` characters, at a word boundary when there is one."""
    if width < len(ellipsis):
        raise ValueError("width is shorter than the ellipsis")
    if len(text) <= width:
        return text
    cut = text[: width - len(ellipsis)]
    if " " in cut:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip() + ellipsis


def is_slug(text, sep="-"):
    """Whether `text` is already a slug."""
    if not text:
        return False
    parts = text.split(sep)
    return all(p.isalnum() and p == p.lower() for p in parts)
