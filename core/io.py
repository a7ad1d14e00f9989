"""Files in and out, one rule for every command.

Reading: data files (JSON, JSONL, recipes) are UTF-8, a byte-order mark allowed; anything else is a
`UserError` naming the file and the byte offset. Plain text a user hands in to be processed (a
document to extract from) may be in a legacy encoding: it is decoded as UTF-8, else as Latin-1 with a
warning that says so; a binary file is refused.

Writing: output paths are checked (a folder that can be made and written, no overwrite unless asked)
before any model loads, so a bad path costs nothing; results are written atomically (a temporary file
in the same folder, then a rename), so a failed or interrupted write never leaves half a file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from peft_apps.core.errors import UserError

BOM = b"\xef\xbb\xbf"


def decode_utf8(data: bytes, path: str | Path) -> str:
    """UTF-8 (a leading BOM dropped), or a UserError naming the file and the first bad byte's offset."""
    if data.startswith(BOM):
        data = data[len(BOM):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = data[e.start:e.start + 4]
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(f"{path}: not UTF-8 text (line {line}, byte {e.start}: {bad!r})",
                        hint=f"convert it to UTF-8, e.g. `iconv -f latin1 -t utf-8 {path} > fixed`") from None


def read_text(path: str | Path, what: str = "file") -> str:
    """A data file's text (UTF-8, BOM allowed); a missing file or a folder is a UserError naming it."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} not found: {p}")
    if p.is_dir():
        raise UserError(f"{p} is a folder; expected a {what}")
    return decode_utf8(p.read_bytes(), p)


def read_user_text(path: str | Path) -> tuple[str, str | None]:
    """A plain-text input and a warning, if any: UTF-8 (BOM allowed), else Latin-1 with a warning saying
    so. A binary file (NUL bytes) is a UserError."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"file not found: {p}")
    if p.is_dir():
        raise UserError(f"{p} is a folder; expected a file")
    data = p.read_bytes()
    if b"\x00" in data[:8192]:
        raise UserError(f"{p}: a binary file, not text")
    try:
        return decode_utf8(data, p), None
    except UserError:
        return data.decode("latin-1"), f"{p}: not UTF-8; decoded as Latin-1"


def check_output(path: str | Path, force: bool = False, what: str = "output") -> Path:
    """Fail now, before any work, if `path` cannot be written: its folder cannot be made or written, it
    is a folder, or it exists and `force` is not set."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{what} {p} is a folder; give a file path")
    if p.exists() and not force:
        raise UserError(f"{what} {p} already exists", hint="pass --force to overwrite it, or choose another path")
    parent = p.parent if str(p.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the folder of {what} {p}: {e.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write {what} {p}: folder {parent} is not writable")
    return p


def _umask() -> int:
    """The process's umask, read without changing it where Linux says it (os.umask sets while it reads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` through a temporary file in the same folder and a rename. The file gets
    the permissions any new file gets (0666 less the umask), not the temporary file's private 0600."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
