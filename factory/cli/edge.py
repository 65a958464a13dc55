"""The command line's one error edge: every `factory` command runs inside :func:`run`.

Whatever a user controls (recipe content and encoding, arguments, paths, permissions, a full
disk, a bad checkpoint, a dead endpoint) ends in one line on stderr and an exit code, never
a Python traceback: 2 for input the user can fix, 1 for a build or command that failed, 130
for Ctrl-C. Click's own usage errors (a bad option value, a missing argument) are printed on
one line too. Anything unexpected is a bug: one line says so and names the file its full
traceback was saved to (``$MIFA_CRASH_DIR``, else ``~/.cache/mifa-factory/crashes``, else
the temp folder).
"""

from __future__ import annotations

import errno
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import NoReturn

import typer

from cluster.ray_cluster import ClusterError
from factory.cli import app
from factory.cli.common import print_error
from factory.commands.calibrate import CalibrationError
from factory.commands.identities import BankIndexError
from factory.engine.failures import BuildError
from factory.engine.rundir import RunError
from factory.recipe import RecipeError
from manifests.atomic import WriteError
from manifests.bank import IdentityBankError
from stages.base import StageError
from stages.realism.train import TrainError

__all__ = ["BAD_INPUT", "FAILED", "crash_dir", "main", "run"]

# Errors whose message already names the field or file and the fix.
BAD_INPUT: tuple[type[BaseException], ...] = (
    RecipeError,
    RunError,
    IdentityBankError,
    CalibrationError,
    BankIndexError,
    TrainError,
)
FAILED: tuple[type[BaseException], ...] = (BuildError, ClusterError, StageError, WriteError)
# OSErrors about a path the user gave (missing, unreadable, a folder where a file should be, ...).
_PATH_ERRNOS = {
    errno.ENOENT,
    errno.EACCES,
    errno.EPERM,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.ENAMETOOLONG,
    errno.EROFS,
    errno.EEXIST,
    errno.ELOOP,
}


_PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def main() -> NoReturn:
    """The `factory` console script."""
    sys.exit(run(sys.argv[1:]))


def run(argv: list[str]) -> int:
    """Run the command line on ``argv``; returns the exit code."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="factory", standalone_mode=False)
    except typer.TyperException as exc:  # typer's (vendored click's) usage and parameter errors
        return _usage_error(exc)
    except (typer.Abort, KeyboardInterrupt):
        return _error("interrupted", 130)
    except BaseException as exc:  # this is the edge: nothing passes it as a traceback
        return _known(exc, argv)
    return code if isinstance(code, int) else 0


def _usage_error(exc: typer.TyperException) -> int:
    ctx = getattr(exc, "ctx", None)
    # A group called without a command: its help, as typer itself shows it (it also tells
    # this error apart by name: the class is not public).
    if type(exc).__name__ == "NoArgsIsHelpError":
        typer.echo(exc.format_message(), err=True)
        return 2
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    return _error(f"{exc.format_message()}{hint}", exc.exit_code)


def _known(exc: BaseException, argv: list[str]) -> int:
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else _error(str(exc.code), 1))
    if isinstance(exc, BAD_INPUT):
        return _error(str(exc), 2)
    if isinstance(exc, FAILED):
        return _error(str(exc), 1, lines=isinstance(exc, BuildError))
    if isinstance(exc, BrokenPipeError):  # `factory query ... | head`
        return 0
    if isinstance(exc, OSError) and exc.errno in _PATH_ERRNOS and exc.filename is not None:
        return _error(f"{exc.filename}: {exc.strerror}; check the path you gave", 2)
    if isinstance(exc, _PATH_ERRORS) and exc.errno is None:  # raised by our code, its message names the path
        return _error(str(exc), 2)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return _error(f"{exc.filename or 'a file'}: no space left on device; free space and run the command again", 1)
    saved = _save_traceback(exc, argv)
    where = f"the full traceback is in {saved}" if saved else "the traceback could not be saved"
    name = type(exc).__name__
    return _error(f"unexpected {name}: {exc} (a bug in the factory; {where}; please report it with that file)", 1)


def _error(message: str, code: int, *, lines: bool = False) -> int:
    print_error(message, lines=lines)
    return code


def crash_dir() -> list[Path]:
    """Where tracebacks of unexpected errors go, in order of preference."""
    preferred = [Path(os.environ["MIFA_CRASH_DIR"])] if os.environ.get("MIFA_CRASH_DIR") else []
    xdg = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [*preferred, xdg / "mifa-factory" / "crashes", Path(tempfile.gettempdir()) / "mifa-factory-crashes"]


def _save_traceback(exc: BaseException, argv: list[str]) -> Path | None:
    text = f"factory {' '.join(argv)}\n\n" + "".join(traceback.format_exception(exc))
    name = f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    for folder in crash_dir():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.write_text(text, errors="backslashreplace")
            return path
        except OSError:
            continue
    return None
