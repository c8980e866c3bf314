"""Errors a user can cause (bad file, bad field, bad config, unknown model).

The CLI prints a `TetherError` as one clear message, without a traceback, and exits non-zero.
"""


class TetherError(Exception):
    """A problem the user can fix; the message says what and where."""


class InputError(TetherError):
    """Malformed input data; the message names the file, line and field."""

    def __init__(self, path, line: int | None, message: str):
        self.path, self.line = str(path), line
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")
