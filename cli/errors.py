"""One-line errors and warnings on stderr; exit code 2 for every problem with the user's input,
70 (EX_SOFTWARE, sysexits.h) for a bug in onnxplain itself."""

from __future__ import annotations

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
