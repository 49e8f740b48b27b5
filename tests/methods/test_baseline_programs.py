"""The computed baselines' programs (methods.baselines) are kept by what they are built from
(row shape, type, kind and its parameter), not by the input's name: two inputs alike share
one, a refusal still names its own input, and the parameter of the other kind is no key."""

from __future__ import annotations

import numpy as np
import pytest

from onnxplain.errors import InputError
from onnxplain.methods import baselines
from onnxplain.methods.baselines import make_baselines


def _session_count() -> int:
    return len(baselines._SESSIONS)


def test_inputs_alike_share_one_program_and_give_their_own_baselines():
    rng = np.random.default_rng(0)
    feeds = {name: rng.normal(size=(2, 3, 9, 11)).astype(np.float32) for name in ("a", "b")}
    baselines._SESSIONS.clear()
    both = make_baselines(feeds, ["a", "b"], "blur", blur_sigma=1.5)
    assert _session_count() == 1
    for name in ("a", "b"):  # each its own blur, as when it is the only input
        alone = make_baselines({name: feeds[name]}, [name], "blur", blur_sigma=1.5)[name]
        np.testing.assert_array_equal(both[name], alone)
    assert not np.array_equal(both["a"], both["b"])


def test_the_other_kinds_parameter_builds_no_new_program():
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)
    baselines._SESSIONS.clear()
    first = make_baselines({"x": x}, ["x"], "blur", blur_sigma=2.0, seed=1)["x"]
    again = make_baselines({"x": x}, ["x"], "blur", blur_sigma=2.0, seed=2)["x"]
    assert _session_count() == 1
    np.testing.assert_array_equal(first, again)
    make_baselines({"x": x}, ["x"], "uniform", blur_sigma=2.0, seed=1)
    make_baselines({"x": x}, ["x"], "uniform", blur_sigma=3.0, seed=1)
    assert _session_count() == 2
    make_baselines({"x": x}, ["x"], "uniform", seed=2)
    assert _session_count() == 3


def test_a_refusal_names_each_input():
    x = np.zeros((2, 5), np.float32)  # no image: a blur is refused
    for name in ("first", "second"):
        with pytest.raises(InputError, match=f"^a blurred baseline needs an image input; "
                                             f"'{name}' has shape"):
            make_baselines({name: x}, [name], "blur")


def test_only_the_last_used_programs_are_kept():
    """Least recently used goes first: seed 0, used again before the overflow, stays."""
    x = np.random.default_rng(2).normal(size=(1, 4, 4)).astype(np.float32)
    baselines._SESSIONS.clear()
    for seed in range(baselines._KEPT):
        make_baselines({"x": x}, ["x"], "uniform", seed=seed)
    make_baselines({"x": x}, ["x"], "uniform", seed=0)
    for seed in range(baselines._KEPT, baselines._KEPT + 3):
        make_baselines({"x": x}, ["x"], "uniform", seed=seed)
    assert _session_count() == baselines._KEPT
    kept = sorted(key[-1] for key in baselines._SESSIONS)
    assert kept == [0, *range(4, baselines._KEPT + 3)]
