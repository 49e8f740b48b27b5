"""What the perturbation methods share: which input they perturb, and feeds for a chunk of
perturbed copies of one row (the runtime repeats the other inputs, see runtime.perturb)."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np

from ..errors import InputError


def perturbed_input(feeds: Mapping[str, np.ndarray], name: str | None,
                    skip: Collection[str] = ()) -> str:
    """The input a perturbation method changes: `name`, else the first float input not in
    `skip` (a KV cache: _tokens.cached_inputs), else the first integer input shaped
    [batch, tokens] (token ids)."""
    if name is not None:
        if not isinstance(name, str):
            raise InputError(f"option 'input' names an input ({', '.join(feeds)}), got a "
                             f"value of type {type(name).__name__}")
        if name not in feeds:
            raise InputError(f"unknown input '{name}' (inputs: {', '.join(feeds)})")
        return name
    for key, value in feeds.items():
        if value.dtype.kind == "f" and key not in skip:
            return key
    for key, value in feeds.items():
        if value.dtype.kind in "iu" and value.ndim == 2:
            return key
    raise InputError("no float or token-id input to perturb; name one with input=NAME")


def copies(feeds: Mapping[str, np.ndarray], name: str, values: np.ndarray
           ) -> dict[str, np.ndarray]:
    """Feeds of perturbed copies: input `name` set to `values` ([copies, ...]) in its type;
    perturbed_scores repeats every other input from the row, on its own batch axis."""
    return {name: np.ascontiguousarray(values, dtype=feeds[name].dtype)}
