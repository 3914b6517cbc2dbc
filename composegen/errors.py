"""One error tree for the whole tool.

Every failure a user can cause or meet is a ComposegenError with a one-line message, an optional
hint saying how to fix it, and an exit code. The CLI catches them in one place and prints one
line; a traceback appears only with --debug.
"""

from __future__ import annotations

EXIT_RUNTIME = 1
EXIT_BAD_INPUT = 2


class ComposegenError(Exception):
    exit_code = EXIT_RUNTIME

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class BadInputError(ComposegenError):
    """The user gave us something we cannot use: a file, an option, a profile."""

    exit_code = EXIT_BAD_INPUT


class InventoryFileError(BadInputError):
    """A --from / --inventory file that is missing, unreadable or not an NVIDIA inventory."""

    def __init__(self, path: str, problem: str, hint: str | None = None) -> None:
        super().__init__(f"{path}: {problem}", hint)
        self.path = path
        self.problem = problem


class DetectionError(ComposegenError):
    """Probing the local hardware failed in a way that is not 'there is no GPU'."""
