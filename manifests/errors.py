"""The errors a user is told about: a message naming the field, file or option, and the fix.

Every layer may import ``manifests``, so the bases live here. A module raises a
:class:`UserError` (input the user can fix) or a :class:`FailedError` (a build or check that
ran and failed) where it knows what went wrong; the CLI edge (``factory.cli.edge``) alone turns
them into a message on stderr and an exit code. Anything else that reaches the edge is a bug:
it says so and saves the traceback to a crash file.

The message is one line: a line break that a user's input carried is spelled out when it is
printed. A :class:`ReportError` is the exception: its message is a report the factory composed
(a failed build's causes, DuckDB's pointer under a user's SQL), printed line by line.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = ["FailedError", "ReportError", "UserError"]


class UserError(Exception):
    """Input the user can fix (a recipe field, an option, a path, a missing model file).

    ``str()`` is the message, then the fix when one is given apart: ``UserError("--limit -1:
    must be >= 0")`` or ``UserError("no bank at x", fix="create it with ...")``.
    """

    # Whether the message is a report of several lines (printed as they are), not one line.
    multiline: ClassVar[bool] = False

    def __init__(self, message: str = "", *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message}; {self.fix}" if self.fix else self.message


class FailedError(UserError):
    """A build, a command or a check that ran and failed (a full disk, a stage that cannot
    run, failed shards); the message says why and what to do next."""


class ReportError(FailedError):
    """A failure whose message is a report of several lines: a build stopped by its failures
    (each cause, then what to do), a download that did not come (what to fetch by hand)."""

    multiline = True
