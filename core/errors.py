"""One exception type for mistakes a user can fix: the CLI prints its message, never a traceback."""


class UserError(Exception):
    """A problem with the user's input (file, record, field, argument) rather than a bug."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:  # pragma: no cover - trivial
        msg = super().__str__()
        return f"{msg}\n  hint: {self.hint}" if self.hint else msg


_STRICT = False
_ISSUED: list[str] = []


def set_strict(on: bool) -> None:
    """`--strict` (for CI): every warning below becomes a UserError."""
    global _STRICT
    _STRICT = on


def warn(message: str, hint: str | None = None) -> None:
    """Something the user should know that does not stop the work (an empty input, a skipped record, an
    adapter trained for another app): one line on stderr, or a UserError under `--strict`. The same
    message is given once per process (a file read twice, for its split and again for scoring, warns once)."""
    if _STRICT:
        raise UserError(f"{message} (a warning; --strict makes it an error)", hint=hint)
    if message in _ISSUED:
        return
    _ISSUED.append(message)
    from rich.console import Console

    from rich.markup import escape

    console = Console(stderr=True)
    console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)
    if hint:
        console.print(f"[dim]hint:[/] {escape(hint)}", highlight=False, soft_wrap=True)


def issued_warnings() -> list[str]:
    """The warnings this process has given so far (a command's JSON output reports them with its results)."""
    return list(_ISSUED)
