"""The work budget every method with a count option (masks, samples, steps, windows) goes
through before it allocates or runs anything: runs per input row against `max_runs`, and
what the count holds in memory at once against the engine's memory budget."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

# Forward or gradient runs per input row that run without asking: 10,000 is a 224x224 image
# under occlusion at window 3 (5,625) or a 10,000-column table, minutes on a CPU for a
# mid-sized model; window 1 over a 5-D volume (98,304 copies), or a count of 10**12 masks,
# samples or steps, is refused until the user raises `max_runs`.
MAX_RUNS = 10_000


@dataclass(frozen=True)
class Work:
    """What a count option asks for: `runs` per input row (perturbed copies, masks, noise
    samples, path steps) and the bytes held at once for them (`held`: masks, noise,
    quadrature matrices, one score per run)."""

    option: str
    count: int
    runs: int
    held: int = 0
    what: str = "forward runs"
    advice: str = ""
    # How the message names what was asked, if not "with option=count" (occlusion's window).
    about: str = ""


def check_work(method: str, work: Work, max_runs, budget_mb: float) -> None:
    """Refuse, in one line naming the option and the count, work over either budget."""
    limit = _limit(method, max_runs)
    about = work.about or f"with {work.option}={work.count:,}"
    if work.runs > limit:
        advice = f"{work.advice} or " if work.advice else f"lower {work.option} or "
        raise InputError(f"{method} {about} takes {work.runs:,} "
                         f"{work.what} per row, over the budget of max_runs="
                         f"{limit:,}: {advice}allow it with -O max_runs={work.runs} "
                         f"(API: max_runs={work.runs})")
    if work.held > budget_mb * 2**20:
        raise InputError(f"{method} {about} holds about "
                         f"{_size(work.held)} at once, over the memory budget of "
                         f"{budget_mb:g} MB: lower {work.option} (or explain fewer rows at a "
                         "time) or raise memory_budget_mb")


def _limit(method: str, max_runs) -> int:
    if isinstance(max_runs, bool) or not isinstance(max_runs, int | np.integer) or max_runs < 1:
        raise InputError(f"max_runs of {method} must be a positive number of runs, got "
                         f"{max_runs!r}")
    return int(max_runs)


def _size(nbytes: int) -> str:
    if nbytes >= 2**90:  # past what a float division prints sensibly
        return "more than 2**90 bytes"
    for unit, scale in (("TB", 2**40), ("GB", 2**30), ("MB", 2**20)):
        if nbytes >= scale:
            return f"{nbytes / scale:,.1f} {unit}"
    return f"{nbytes:,} bytes"


def rows_and_bytes(feeds: Mapping[str, np.ndarray], names=None) -> tuple[int, int]:
    """(input rows, bytes of one row over the float inputs, or all inputs if none is float)."""
    arrays = [np.asarray(v) for k, v in feeds.items() if names is None or k in names]
    floats = [a for a in arrays if a.dtype.kind == "f"] or arrays
    rows = max((a.shape[0] for a in floats if a.ndim), default=1)
    per_row = sum(a.nbytes // max(a.shape[0], 1) if a.ndim else a.nbytes for a in floats)
    return rows, per_row


def count_of(options: Mapping[str, object], key: str) -> int:
    """A count option as an int (non-integers and values below 1 are left to the method's
    own one-line check: they are 0 runs here)."""
    value = options.get(key)
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        return 0
    return max(int(value), 0)
