"""One-line errors and warnings on stderr; exit code 2 for every problem with the user's input,
70 (EX_SOFTWARE, sysexits.h) for a bug in onnxplain itself."""

from __future__ import annotations

import errno
import functools
import os
import shlex
import sys
import traceback
import warnings

import click

from onnxplain.errors import OnnxplainError

USAGE_ERROR = 2
INTERNAL_ERROR = 70
# Errors of a path the user gave (read-only, immutable, too long, a file for a folder, full).
LOCATION_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EACCES, errno.EPERM, errno.EROFS,
                             errno.ENOTDIR, errno.EISDIR, errno.ENOSPC, errno.EDQUOT,
                             errno.EEXIST})
# The arguments of this invocation (set by main's group), for the reproduction hint.
COMMAND_LINE: list[str] = []


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"warning: {one_line(message)}", err=True)


def friendly(command):
    """Turn onnxplain's errors into `error: ...` and exit 2; unexpected errors into one line
    and a reproduction hint, exit 70 (ONNXPLAIN_DEBUG=1 shows the traceback)."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        warnings.showwarning = show_warning
        try:
            return command(*args, **kwargs)
        except OnnxplainError as err:
            click.echo(f"error: {one_line(err)}", err=True)
            sys.exit(USAGE_ERROR)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, as Unix tools do.
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stdout must stay open for exit
            sys.exit(0)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except OSError as err:
            if err.errno not in LOCATION_ERRNOS or err.filename is None:
                report_internal_error(err)
                sys.exit(INTERNAL_ERROR)
            # A place the user named that cannot be written: their input, not a bug.
            click.echo(f"error: cannot use {one_line(err.filename)[:200]}: {err.strerror}",
                       err=True)
            sys.exit(USAGE_ERROR)
        except Exception as err:  # noqa: BLE001 - a bug: one line unless debugging
            report_internal_error(err)
            sys.exit(INTERNAL_ERROR)
    return wrapper


def report_internal_error(err: BaseException) -> None:
    """`error: internal error ...` naming the version, then how to reproduce it; the
    traceback only with ONNXPLAIN_DEBUG=1 (a MemoryError is a bug too: inputs are sized
    before they are allocated)."""
    from onnxplain._version import __version__

    if os.environ.get("ONNXPLAIN_DEBUG"):
        traceback.print_exc()
    click.echo(f"error: internal error: {type(err).__name__}: {one_line(err)}; this is a bug "
               f"in onnxplain {__version__}, not a problem with your input", err=True)
    command = shlex.join(["onnxplain", *COMMAND_LINE])
    click.echo(f"to report it, rerun as: ONNXPLAIN_DEBUG=1 {command}", err=True)
