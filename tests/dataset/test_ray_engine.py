"""explain-dataset on Ray (issue 20): a local Ray instance of 2 workers gives the local
engine's rows, values and errors; a worker killed mid-run loses and duplicates no row; a
run written by one engine resumes with the other; the CLI starts and stops its own
instance. Oracle: the local engine (itself checked against Explainer.explain row by row in
test_explain_dataset.py). Kept small for the 2-core CI machine: one shared instance."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from onnxplain.dataset import explain_dataset
from onnxplain.dataset.results import attribution, read_errors, read_results
from onnxplain.errors import ModelError
from onnxplain.graph.model import Model

from ..conftest import require
from .conftest import digits_folder, one_line_error


@pytest.fixture(scope="module")
def ray_instance():
    require("pyarrow")
    ray = require("ray")
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    yield ray
    ray.shutdown()


def _by_id(out: Path):
    table = read_results(out)
    order = np.argsort(table.column("id").to_pylist())
    return table.take(order)


def _same_rows(ray_out: Path, local_out: Path) -> None:
    """The same rows, each once, with the same values (within 1e-6) and columns."""
    ray_rows, local_rows = _by_id(ray_out), _by_id(local_out)
    ids = ray_rows.column("id").to_pylist()
    assert len(ids) == len(set(ids))
    assert ids == local_rows.column("id").to_pylist()
    for name in ("source", "label", "target", "predicted", "note"):
        assert ray_rows.column(name).to_pylist() == local_rows.column(name).to_pylist(), name
    np.testing.assert_allclose(ray_rows.column("score").to_pylist(),
                               local_rows.column("score").to_pylist(), rtol=1e-6)
    np.testing.assert_allclose(attribution(ray_rows, "image"), attribution(local_rows, "image"),
                               rtol=1e-6, atol=1e-6 * np.abs(attribution(local_rows,
                                                                         "image")).max())


def _digits_shards(zoo, folder: Path, rows: int) -> None:
    """Two .npz shards of `rows` distinct digits; row 5 holds a NaN (an error row)."""
    images = np.repeat(zoo.sample("digits_cnn")["image"], -(-rows // 16), axis=0)[:rows]
    images = images + np.linspace(0, 0.1, rows, dtype=np.float32)[:, None, None, None]
    images[5, 0, 3, 3] = np.nan
    folder.mkdir(parents=True)
    np.savez(folder / "a.npz", image=images[:rows // 2])
    np.savez(folder / "b.npz", image=images[rows // 2:])


def test_ray_equals_the_local_engine_rows_values_and_errors(zoo, ray_instance, tmp_path):
    model = zoo.model_path("digits_cnn")
    digits_folder(zoo, tmp_path / "images", 23)
    (tmp_path / "images" / "class1" / "broken.png").write_bytes(b"not a png")
    _digits_shards(zoo, tmp_path / "shards", 90)
    for data, method in (("images", "saliency"), ("shards", "integrated_gradients")):
        common = dict(batch_size=4, shard_rows=8, progress=False)
        local = explain_dataset(model, tmp_path / data, tmp_path / f"{data}-local", method,
                                **common)
        ray = explain_dataset(model, tmp_path / data, tmp_path / f"{data}-ray", method,
                              engine="ray", workers=2, **common)
        assert ray["engine"] == "ray" and ray["workers"] == 2
        for key in ("rows", "explained", "errors", "unreadable"):
            assert ray[key] == local[key], key
        assert ray["errors"] == 1
        _same_rows(tmp_path / f"{data}-ray", tmp_path / f"{data}-local")
        if method == "integrated_gradients":
            ray_delta = _by_id(tmp_path / f"{data}-ray").column("delta").to_pylist()
            local_delta = _by_id(tmp_path / f"{data}-local").column("delta").to_pylist()
            # A gap between sums: the workers' one thread rounds apart from two (~5e-7).
            np.testing.assert_allclose(ray_delta, local_delta, rtol=1e-5, atol=1e-5)
        errors = read_errors(tmp_path / f"{data}-ray").to_pylist()
        assert errors == read_errors(tmp_path / f"{data}-local").to_pylist()


def _worker_pids() -> list[int]:
    """The processes of Ray Data actors running ExplainWorker (Ray names them so)."""
    import psutil

    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        line = " ".join(process.info["cmdline"] or [])
        if "ExplainWorker" in line and process.info["pid"] != os.getpid():
            found.append(process.info["pid"])
    return found


def test_parquet_token_ids_on_ray_equal_the_local_engine(zoo, ray_instance, tmp_path):
    """A Parquet file of token ids (several row groups, so windows cut through them) over the
    sentiment BERT: the same rows and attributions as the local engine."""
    pq = require("pyarrow.parquet")
    pa = require("pyarrow")
    model = zoo.build("sentiment_bert") / "model.onnx"
    ids = np.random.default_rng(0).integers(5, 60, (37, 9))
    ids[:, 0], ids[:, -1] = 2, 3
    mask = np.ones_like(ids)
    mask[::3, -3:], ids[::3, -3:] = 0, 0
    pq.write_table(pa.table({"input_ids": list(ids), "attention_mask": list(mask)}),
                   tmp_path / "ids.parquet", row_group_size=5)
    common = dict(batch_size=4, shard_rows=8, progress=False)
    for engine, extra in (("local", {}), ("ray", {"workers": 2})):
        summary = explain_dataset(model, tmp_path / "ids.parquet", tmp_path / engine,
                                  "saliency", engine=engine, **common, **extra)
        assert summary["explained"] == 37
    ray_rows, local_rows = _by_id(tmp_path / "ray"), _by_id(tmp_path / "local")
    assert ray_rows.column("id").to_pylist() == local_rows.column("id").to_pylist()
    np.testing.assert_allclose(attribution(ray_rows, "input_ids"),
                               attribution(local_rows, "input_ids"), rtol=1e-6, atol=1e-7)


def test_a_killed_worker_loses_and_duplicates_no_row(zoo, ray_instance, tmp_path):
    model = zoo.model_path("digits_cnn")
    _digits_shards(zoo, tmp_path / "data", 400)
    killed: list[int] = []

    def kill_one_worker_once_results_come() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            pids = _worker_pids()
            if pids and list((tmp_path / "ray" / "results").glob("part-*.parquet")):
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one_worker_once_results_come, daemon=True)
    killer.start()
    options = dict(batch_size=4, shard_rows=4, progress=False, n_samples=30)
    summary = explain_dataset(model, tmp_path / "data", tmp_path / "ray", "smoothgrad",
                              engine="ray", workers=2, **options)
    killer.join()
    assert killed, "no worker was killed while the run was going"
    assert summary["explained"] + summary["errors"] == 400 and summary["errors"] == 1
    explain_dataset(model, tmp_path / "data", tmp_path / "local", "smoothgrad", **options)
    _same_rows(tmp_path / "ray", tmp_path / "local")


def test_a_run_written_by_one_engine_resumes_with_the_other(zoo, ray_instance, tmp_path):
    model = zoo.model_path("digits_cnn")
    _digits_shards(zoo, tmp_path / "data", 60)
    common = dict(batch_size=4, shard_rows=8, progress=False)
    explain_dataset(model, tmp_path / "data", tmp_path / "whole", "saliency", **common)
    explain_dataset(model, tmp_path / "data", tmp_path / "out", "saliency", **common)
    shards = sorted((tmp_path / "out" / "results").glob("part-*.parquet"))
    for shard in shards[len(shards) // 2:]:  # what a run stopped half-way leaves
        shard.unlink()
    (tmp_path / "out" / "summary.json").unlink()
    (tmp_path / "out" / "errors.parquet").unlink()
    kept = len(read_results(tmp_path / "out"))
    summary = explain_dataset(model, tmp_path / "data", tmp_path / "out", "saliency",
                              resume=True, engine="ray", workers=2, **common)
    assert summary["skipped"] == kept + 1  # the NaN row's error was committed too
    assert summary["explained"] == 59 - kept and summary["errors"] == 0
    _same_rows(tmp_path / "out", tmp_path / "whole")


def test_ray_settings_are_checked_in_one_line(zoo, ray_instance, tmp_path):
    model = zoo.model_path("digits_cnn")
    _digits_shards(zoo, tmp_path / "data", 8)
    run = dict(progress=False)
    message = one_line_error(lambda: explain_dataset(
        model, tmp_path / "data", tmp_path / "a", workers=2, **run))
    assert "engine" in message
    assert "unknown engine" in one_line_error(lambda: explain_dataset(
        model, tmp_path / "data", tmp_path / "b", engine="spark", **run))
    assert "workers" in one_line_error(lambda: explain_dataset(
        model, tmp_path / "data", tmp_path / "c", engine="ray", workers=0, **run))
    assert "GPU" in one_line_error(lambda: explain_dataset(
        model, tmp_path / "data", tmp_path / "d", engine="ray", gpus_per_worker=1, **run))
    assert "CPU each" in one_line_error(lambda: explain_dataset(
        model, tmp_path / "data", tmp_path / "e", engine="ray", workers=3, **run))
    assert "--gpus-per-worker" in one_line_error(lambda: explain_dataset(
        model, tmp_path / "data", tmp_path / "f", engine="ray", providers="cuda", **run))
    assert "not on the CPU" in one_line_error(lambda: explain_dataset(
        model, tmp_path / "data", tmp_path / "g", engine="ray", providers="cpu",
        gpus_per_worker=0.5, **run))
    assert "already connected" in one_line_error(lambda: explain_dataset(
        model, tmp_path / "data", tmp_path / "h", engine="ray", address="auto", **run))
    assert not any((tmp_path / name).exists() for name in "abcdefgh")
    assert ray_instance.is_initialized()  # the caller's instance is left running


def test_a_workers_failure_to_start_is_raised_with_its_own_type(zoo, ray_instance, tmp_path):
    """The model file replaced by garbage after the driver read it: the workers cannot load
    it, and the run fails with onnxplain's own error (ModelError), not Ray's wrapper."""
    model = tmp_path / "model.onnx"
    model.write_bytes(zoo.model_path("digits_cnn").read_bytes())
    _digits_shards(zoo, tmp_path / "data", 8)
    loaded = Model.load(model)
    model.write_bytes(b"garbage")
    with pytest.raises(ModelError) as info:
        explain_dataset(loaded, tmp_path / "data", tmp_path / "out", engine="ray",
                        workers=1, progress=False)
    assert type(info.value) is ModelError
    assert str(info.value).startswith(f"{model} is not an ONNX model")
