"""One exception type for mistakes a user can fix: the CLI prints its message, never a traceback."""


class UserError(Exception):
    """A problem with the user's input (file, record, field, argument) rather than a bug."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:  # pragma: no cover - trivial
        msg = super().__str__()
        return f"{msg}\n  hint: {self.hint}" if self.hint else msg
