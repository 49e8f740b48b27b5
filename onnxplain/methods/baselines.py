"""Reference inputs for path and difference methods (Integrated Gradients, DeepLIFT)."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import InputError
from ..export.baselines import COMPUTED, baseline_program
from ..runtime.session import Session

NAMED = ("zeros", "constant", "blur", "uniform")


def make_baselines(feeds: Mapping[str, np.ndarray], names: Sequence[str], baseline,
                   value: float = 0.0, blur_sigma: float = 5.0, seed: int = 0
                   ) -> dict[str, np.ndarray]:
    """One baseline per input in `names`, shaped and typed like the input.

    `baseline` is a name (see NAMED), a number (a constant baseline), an array broadcastable
    to the input (single-input models) or a dict of such arrays by input name.
    """
    if isinstance(baseline, Mapping):
        missing = [name for name in names if name not in baseline]
        if missing:
            raise InputError(f"the baseline dict has no entry for input '{missing[0]}'")
        return {name: _array_baseline(feeds[name], baseline[name], name) for name in names}
    if isinstance(baseline, np.ndarray):
        if len(names) != 1:
            raise InputError("pass one baseline array per input as a dict name -> array")
        return {names[0]: _array_baseline(feeds[names[0]], baseline, names[0])}
    return {name: _named_baseline(feeds[name], baseline, value, blur_sigma, seed, name)
            for name in names}


def _array_baseline(x: np.ndarray, given, name: str) -> np.ndarray:
    array = np.asarray(given)
    try:
        return np.ascontiguousarray(np.broadcast_to(array, x.shape), dtype=x.dtype)
    except ValueError:
        raise InputError(f"baseline for '{name}' has shape {array.shape}, which does not "
                         f"broadcast to the input's {x.shape}") from None


def _named_baseline(x: np.ndarray, kind, value: float, blur_sigma: float, seed: int,
                    name: str) -> np.ndarray:
    if isinstance(kind, (int, float)) and not isinstance(kind, bool):
        return np.full_like(x, float(kind))
    text = str(kind).strip().lower()
    try:
        return np.full_like(x, float(text))
    except ValueError:
        pass
    if text == "zeros":
        return np.zeros_like(x)
    if text == "constant":
        return np.full_like(x, value)
    if text in COMPUTED:
        return _computed(x, text, float(blur_sigma), int(seed), name)
    raise InputError(f"unknown baseline '{kind}' (use {', '.join(NAMED)}, a number or an "
                     "array)")


def _computed(x: np.ndarray, kind: str, sigma: float, seed: int, name: str) -> np.ndarray:
    """The blurred or uniform baseline of `x`, by the ONNX definition the exported
    explainers compute it with (export.baselines), run here on its own."""
    session = _baseline_session(x, kind, sigma, seed, name)
    return next(iter(session.run(None, {"x": x}).values()))


# The baseline programs last used, by what one is built from: a row's shape and type, the
# kind and its parameter. Not by the input's name: it only words a refusal, raised before a
# program is kept.
_SESSIONS: dict[tuple, Session] = {}
_KEPT = 8
_LOCK = threading.Lock()  # explanations may run in threads (the dataset engine)


def _baseline_session(x: np.ndarray, kind: str, sigma: float, seed: int, name: str
                      ) -> Session:
    key = (x.shape[1:], x.dtype.str, kind, sigma if kind == "blur" else seed)
    with _LOCK:
        session = _SESSIONS.pop(key, None)
    if session is None:
        session = Session(baseline_program(x, kind, sigma, seed, name), ["CPUExecutionProvider"])
    with _LOCK:
        _SESSIONS[key] = session  # the most recently used last
        while len(_SESSIONS) > _KEPT:
            del _SESSIONS[next(iter(_SESSIONS))]
    return session
