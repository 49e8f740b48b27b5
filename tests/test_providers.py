"""Execution providers: one asked for by name either runs or is a one-line error; the default
falls back to the CPU and says so in summary.json. Both branches are checked against what a
real session gets on this machine (CPU-only here, CUDA on a GPU machine)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime
import pytest

import onnxplain
from onnxplain.errors import InputError
from onnxplain.runtime.session import starts

from .cli_helpers import run
from .tiny_models import mlp

CUDA = "CUDAExecutionProvider"
IN_BUILD = CUDA in onnxruntime.get_available_providers()


def _cuda_really_runs() -> bool:
    """An independent probe: a real session over a real model, asked for CUDA only first."""
    if not IN_BUILD:
        return False
    session = onnxruntime.InferenceSession(mlp().SerializeToString(),
                                           providers=[CUDA, "CPUExecutionProvider"])
    return session.get_providers()[0] == CUDA


@pytest.fixture()
def files(tmp_path):
    onnx.save(mlp(), tmp_path / "mlp.onnx")
    np.save(tmp_path / "x.npy", np.ones((2, 6), np.float32))
    return tmp_path


def test_the_probe_agrees_with_a_real_session():
    assert starts(CUDA) == _cuda_really_runs()
    assert starts("CPUExecutionProvider")


def test_cuda_by_name_runs_on_cuda_or_is_an_error(files):
    result = run("explain", str(files / "mlp.onnx"), "-i", str(files / "x.npy"),
                 "--provider", "cuda", "-o", str(files / "out"), "--json")
    if _cuda_really_runs():
        assert result.exit_code == 0
        assert json.loads(result.stdout)["execution_provider"] == CUDA
        return
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert "'cuda'" in result.stderr
    assert not (files / "out").exists()
    with pytest.raises(InputError, match="execution provider 'cuda'"):
        onnxplain.Explainer(str(files / "mlp.onnx"), "cuda")


def test_auto_falls_back_and_says_so(files):
    result = run("explain", str(files / "mlp.onnx"), "-i", str(files / "x.npy"),
                 "-o", str(files / "out"), "--json")
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    fallback = [note for note in summary["notes"] if note.startswith("providers auto:")]
    if _cuda_really_runs():
        assert summary["execution_provider"] == CUDA and not fallback
    else:
        assert summary["execution_provider"] == "CPUExecutionProvider"
        assert bool(fallback) == IN_BUILD
