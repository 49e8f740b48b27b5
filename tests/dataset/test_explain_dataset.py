"""explain-dataset on this machine (issue 20, first increment): a folder of images and .npz
shards explained in batches, written as Parquet shards. Oracles: Explainer.explain on the
same rows held in memory (the same batches: bit for bit); a run killed mid-way and resumed
holds every row exactly once, with the values of an uninterrupted run; bad rows land in
errors.parquet and the exit code says so."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxplain import Explainer
from onnxplain.dataset import explain_dataset
from onnxplain.dataset.results import attribution, read_errors, read_results
from onnxplain.images import default_preprocessing, load_images
from onnxplain_cli.main import main

from ..conftest import require
from .conftest import digits_folder

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _pyarrow():
    require("pyarrow")  # the dataset extra: in CI a failure, elsewhere a skip


def test_an_image_folder_equals_explain_on_the_same_batches(zoo, tmp_path):
    model = zoo.model_path("digits_cnn")
    paths = digits_folder(zoo, tmp_path / "data")
    summary = explain_dataset(model, tmp_path / "data", tmp_path / "out", "saliency",
                              batch_size=3, shard_rows=4, progress=False)
    assert summary["explained"] == 10 and summary["errors"] == 0
    table = read_results(tmp_path / "out")
    ids = table.column("id").to_pylist()
    assert ids == [p.relative_to(tmp_path / "data").as_posix() for p in paths]
    assert table.column("label").to_pylist() == [p.parent.name for p in paths]
    explainer = Explainer(str(model), "cpu", progress=False)
    x = load_images([str(p) for p in paths], default_preprocessing(explainer.model.inputs[0]))
    expected = explainer.explain(x, method="saliency", batch_size=3)
    np.testing.assert_array_equal(attribution(table, "image"), expected["image"])
    np.testing.assert_array_equal(table.column("predicted").to_pylist(), expected.predicted)
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["explained"] == 10 and written["method"] == "saliency"


def test_bad_rows_go_to_errors_and_the_rest_is_explained(zoo, tmp_path):
    x = zoo.sample("digits_cnn")["image"][:6].copy()
    x[2, 0, 3, 3] = np.nan
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "a.npz", image=x[:4])
    np.savez(tmp_path / "data" / "b.npz", image=x[4:])
    result = CliRunner().invoke(main, [
        "explain-dataset", str(zoo.model_path("digits_cnn")), "--data", str(tmp_path / "data"),
        "-m", "integrated_gradients", "-O", "n_steps=8", "-O", "delta_tolerance=1e9",
        "-o", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["explained"] == 5 and summary["errors"] == 1
    errors = read_errors(tmp_path / "out")
    assert errors.column("id").to_pylist() == ["a.npz#2"]
    assert "NaN" in errors.column("reason")[0].as_py()
    table = read_results(tmp_path / "out")
    assert table.column("id").to_pylist() == ["a.npz#0", "a.npz#1", "a.npz#3", "b.npz#0",
                                              "b.npz#1"]
    assert all(d is not None for d in table.column("delta").to_pylist())


def test_an_earlier_run_is_refused_without_resume_and_left_as_it_is(zoo, tmp_path):
    digits_folder(zoo, tmp_path / "data", 4)
    args = ["explain-dataset", str(zoo.model_path("digits_cnn")), "--data",
            str(tmp_path / "data"), "-o", str(tmp_path / "out"), "-q"]
    assert CliRunner().invoke(main, args).exit_code == 0
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "--resume" in again.output
    assert len(again.output.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()} == before


def test_a_killed_run_resumes_with_every_row_once(zoo, tmp_path):
    """The CLI in a subprocess, killed once its first shard is written; --resume finishes
    the job: every row once, equal to an uninterrupted run's."""
    x = np.repeat(zoo.sample("digits_cnn")["image"], 100, axis=0)[:1200]
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "rows.npy", x)
    model = str(zoo.model_path("digits_cnn"))
    args = [sys.executable, "-m", "onnxplain_cli.main", "explain-dataset", model, "--data",
            str(tmp_path / "data"), "-m", "smoothgrad", "-O", "n_samples=50",
            "--batch-size", "4", "--shard-rows", "8", "-q"]
    process = subprocess.Popen([*args, "-o", str(tmp_path / "out")], cwd=ROOT)
    deadline = time.time() + 120
    while not list((tmp_path / "out" / "results").glob("part-*.parquet")):
        assert time.time() < deadline and process.poll() is None, "no shard was written"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = len(read_results(tmp_path / "out"))
    assert 0 < partial < 1200
    subprocess.run([*args, "-o", str(tmp_path / "out"), "--resume"], cwd=ROOT, check=True)
    subprocess.run([*args, "-o", str(tmp_path / "whole")], cwd=ROOT, check=True)
    resumed, whole = read_results(tmp_path / "out"), read_results(tmp_path / "whole")
    ids = resumed.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 1200
    order = np.argsort(ids)
    expected = np.argsort(whole.column("id").to_pylist())
    np.testing.assert_array_equal(attribution(resumed, "image")[order],
                                  attribution(whole, "image")[expected])


def test_a_bad_option_is_refused_before_any_row(zoo, tmp_path):
    digits_folder(zoo, tmp_path / "data", 3)
    result = CliRunner().invoke(main, [
        "explain-dataset", str(zoo.model_path("digits_cnn")), "--data", str(tmp_path / "data"),
        "-m", "integrated_gradients", "-O", "n_steps=0", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "n_steps" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_the_reader_thread_keeps_order_raises_where_it_failed_and_stops_with_the_consumer():
    from onnxplain.dataset.run import prefetched

    assert list(prefetched(iter(range(50)), ahead=3)) == list(range(50))

    def failing():
        yield 1
        yield 2
        raise ValueError("row 3 is unreadable")

    got = []
    with pytest.raises(ValueError, match="row 3"):
        for item in prefetched(failing()):
            got.append(item)
    assert got == [1, 2]
    endless = prefetched(iter(range(10**9)), ahead=2)
    assert next(endless) == 0
    endless.close()  # the consumer stops: the reader thread ends instead of blocking
    import threading
    deadline = time.time() + 5
    while any(t.name == "onnxplain-dataset-reader" for t in threading.enumerate()):
        assert time.time() < deadline, "the reader thread did not stop"
        time.sleep(0.05)


def test_rows_whose_map_is_no_explanation_say_so(tmp_path):
    """A model whose scores ignore the input: every saliency map is 0. Each row's note says
    so, the summary counts them, and the command warns on stderr (never a silent result)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"]),
         helper.make_node("Gemm", ["flat", "w", "b"], ["y"])], "ignores",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(np.zeros((4, 3), np.float32), "w"),
         numpy_helper.from_array(np.array([0.0, 1.0, 2.0], np.float32), "b")])
    import onnx

    model = tmp_path / "ignores.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8), model)
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "x.npy", np.random.default_rng(0).normal(size=(5, 4))
            .astype(np.float32))
    result = CliRunner().invoke(main, ["explain-dataset", str(model), "--data",
                                       str(tmp_path / "data"), "-o", str(tmp_path / "out"),
                                       "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["unreadable"] == {"all zero": 5}
    assert "warning: 5 rows have attributions that are all zero" in result.stderr
    table = read_results(tmp_path / "out")
    assert table.column("note").to_pylist() == ["all zero"] * 5
    assert not attribution(table, "x").any()


def test_retry_errors_explains_again_the_rows_that_failed(zoo, tmp_path):
    """Rows that failed (NaN values) are skipped by --resume alone; once the data is
    repaired, --resume --retry-errors explains them (as a clean run does, bit for bit) and
    errors.parquet keeps only the row that still fails, once."""
    from .conftest import write_parquet
    from .test_parquet_source import nested

    model = zoo.model_path("digits_cnn")
    x = np.concatenate([zoo.sample("digits_cnn")["image"]] * 6)[:6].astype(np.float32)
    ids = [f"r{i}" for i in range(6)]
    broken = x.copy()
    broken[[1, 4], 0, 0, 0] = np.nan
    data, out = tmp_path / "data.parquet", tmp_path / "out"
    write_parquet(data, {"image": nested(broken), "id": ids})
    args = ["explain-dataset", str(model), "--data", str(data), "-o", str(out), "-q",
            "--shard-rows", "2"]
    assert CliRunner().invoke(main, args).exit_code == 1
    assert sorted(read_errors(out).column("id").to_pylist()) == ["r1", "r4"]
    repaired = x.copy()
    repaired[4, 0, 0, 0] = np.nan  # r4 still fails
    write_parquet(data, {"image": nested(repaired), "id": ids})
    alone = explain_dataset(model, data, out, "saliency", resume=True, progress=False)
    assert (alone["skipped"], alone["retried"], alone["explained"]) == (6, 0, 0)
    refused = CliRunner().invoke(main, [*args, "--retry-errors"])
    assert refused.exit_code == 2 and "--resume" in refused.output
    again = explain_dataset(model, data, out, "saliency", resume=True, retry_errors=True,
                            progress=False)
    assert (again["skipped"], again["retried"], again["explained"], again["errors"]) == (
        4, 2, 1, 1)
    errors = read_errors(out)
    assert errors.column("id").to_pylist() == ["r4"] and "NaN" in errors[2][0].as_py()
    results = read_results(out)
    order = np.argsort(results.column("id").to_pylist())
    assert [results.column("id").to_pylist()[i] for i in order] == ["r0", "r1", "r2", "r3",
                                                                    "r5"]
    write_parquet(tmp_path / "clean.parquet", {"image": nested(x), "id": ids})
    clean = explain_dataset(model, tmp_path / "clean.parquet", tmp_path / "clean", "saliency",
                            progress=False)
    assert clean["errors"] == 0
    whole = read_results(tmp_path / "clean")
    keep = [whole.column("id").to_pylist().index(id) for id in ("r0", "r1", "r2", "r3", "r5")]
    np.testing.assert_array_equal(attribution(results, "image")[order],
                                  attribution(whole, "image")[keep])
