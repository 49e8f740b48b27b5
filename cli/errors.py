"""One-line errors and warnings on stderr; exit code 2 for every problem with the user's input."""

from __future__ import annotations

import functools
import os
import sys
import traceback
import warnings

import click

from onnxplain.errors import OnnxplainError

USAGE_ERROR = 2


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"warning: {one_line(message)}", err=True)


def friendly(command):
    """Turn onnxplain's errors into `error: ...` and exit 2; unexpected errors into one line
    and exit 1 (ONNXPLAIN_DEBUG=1 shows the traceback)."""
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
            if os.environ.get("ONNXPLAIN_DEBUG"):
                traceback.print_exc()
            click.echo(f"internal error: {type(err).__name__}: {one_line(err)} (a bug in "
                       "onnxplain, not a problem with your input; ONNXPLAIN_DEBUG=1 shows the "
                       "traceback to report)", err=True)
            sys.exit(1)
    return wrapper
