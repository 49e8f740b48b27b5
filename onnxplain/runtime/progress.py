"""Progress bars on stderr for runs that last: shown only after PROGRESS_AFTER_S, never
nested (an inner loop under an outer bar stays silent), and off when the caller says so."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

PROGRESS_AFTER_S = 1.0
_open_bars = 0


class NoBar:
    """What code that reports progress calls when no bar is shown."""

    def update(self, n: int) -> None:
        return None

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        return None

    def reset(self, total: int | None = None) -> None:
        return None


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int | None, label: str, unit: str = "run"
                 ) -> Iterator:
    """A tqdm bar (or a NoBar) for `total` steps; closed on exit."""
    global _open_bars
    if not enabled or _open_bars:
        yield NoBar()
        return
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency; a broken install still explains
        yield NoBar()
        return
    _open_bars += 1
    try:
        with tqdm(total=total, desc=label, unit=unit, delay=PROGRESS_AFTER_S, leave=False,
                  file=sys.stderr, dynamic_ncols=True) as bar:
            yield bar
    finally:
        _open_bars -= 1
