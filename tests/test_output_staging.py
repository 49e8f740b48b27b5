"""Nothing half-written (issue 18): a run that fails after some of its files would have been
written leaves an existing --out folder exactly as it was (files, bytes, no hidden folder)
and creates no new one; a run that succeeds replaces the files of an earlier run and removes
those it did not write again."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxplain
from tests.cli_helpers import digests, run
from tests.tiny_models import mlp


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    onnx.save(mlp(), tmp_path / "mlp.onnx")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((2, 6), np.float32))
    return tmp_path


def explain(workdir: Path, out: Path, *extra: str):
    return run("explain", str(workdir / "mlp.onnx"), "-i", str(workdir / "x.npy"), "-o",
               str(out), "-q", *extra)


def everything(folder: Path) -> dict[str, str]:
    """Every file's digest and every folder (hidden ones included) below `folder`."""
    found = digests(folder, recursive=True)
    found.update({str(p.relative_to(folder)): "dir" for p in folder.rglob("*") if p.is_dir()})
    return found


def fail_after_first_files(monkeypatch) -> None:
    """The summary, written last, fails (a full disk): the arrays before it were written."""
    import onnxplain_cli.outputs as outputs

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(outputs, "save_json", full)


def test_failed_explain_leaves_an_earlier_runs_folder_as_it_was(workdir, monkeypatch):
    out = workdir / "out"
    out.mkdir()
    (out / "keep.txt").write_text("the user's notes")
    assert explain(workdir, out).exit_code == 0
    (out / "attribution.npy").write_bytes(b"an earlier run's array")  # must stay as it is
    before = everything(out)
    fail_after_first_files(monkeypatch)
    result = explain(workdir, out, "-m", "input_x_gradient")
    assert result.exit_code == 2, result.stderr
    assert result.stderr.strip().startswith(f"error: cannot write to {out}"), result.stderr
    assert ".onnxplain-" not in result.stderr  # the user's folder named, not the staging
    assert everything(out) == before


def test_failed_explain_into_a_new_folder_creates_nothing(workdir, monkeypatch):
    before = everything(workdir)
    fail_after_first_files(monkeypatch)
    assert explain(workdir, workdir / "new" / "out").exit_code == 2
    assert everything(workdir) == before


def test_a_new_run_replaces_the_earlier_runs_files(workdir):
    out = workdir / "out"
    out.mkdir()
    (out / "keep.txt").write_text("the user's notes")
    assert explain(workdir, out).exit_code == 0
    (out / "summary.json").write_text((out / "summary.json").read_text().replace(
        '"summary.json"', '"summary.json", "stale.png"'))  # as if an earlier run wrote it
    (out / "stale.png").write_bytes(b"old")
    assert explain(workdir, out, "-m", "input_x_gradient").exit_code == 0
    assert sorted(os.listdir(out)) == ["attribution.npy", "attributions.npz", "keep.txt",
                                       "summary.json"]
    want = onnxplain.Explainer(str(workdir / "mlp.onnx"), progress=False).explain(
        np.load(workdir / "x.npy"), method="input_x_gradient").first
    np.testing.assert_array_equal(np.load(out / "attribution.npy"), want)


def test_failed_export_leaves_the_folder_as_it_was(workdir, monkeypatch):
    import onnxplain_cli.local_head as local_head

    out = workdir / "e.onnx"
    out.write_bytes(b"an earlier export")
    before = everything(workdir)

    def full(path, data):
        Path(path).write_bytes(data[:10])  # half a model, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(local_head, "save_bytes", full)
    result = run("export", str(workdir / "mlp.onnx"), "-o", str(out), "-q")
    assert result.exit_code == 2, result.stderr
    assert everything(workdir) == before
