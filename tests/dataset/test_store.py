"""--store full|map|topk=K: what a dataset run keeps of each attribution. Oracles: the
channel sum written out in numpy (the heatmaps' documented reduction) for map; a stable
numpy argsort of -|value| for topk; for a real model, the saliency map's closed form. Every
store is read back from the files written, across shards and a resumed run."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper, save

from onnxplain.dataset.results import (
    ResultWriter,
    attribution,
    dense,
    read_results,
    topk,
)
from onnxplain.dataset.rows import RowResult
from onnxplain.dataset.store import FULL, MAP, Kept, Store, map_shape, parse_store, top_entries
from onnxplain.errors import InputError
from onnxplain.viz.heatmap import row_map, spatial_map

from ..conftest import require
from .conftest import one_line_error

META = {"method": "saliency", "options": "{}", "model": "abc123"}
# Image rows channels first and last, a one-channel map (Grad-CAM, RISE), token scores and
# a float embedding (no channel axis anywhere in the library: kept as they are).
SHAPES = {"nchw": (3, 5, 4), "nhwc": (5, 4, 3), "cam": (1, 5, 4), "tokens": (7,),
          "embedding": (6, 8)}
# Each map by hand: |values| (or values, signed) summed over the channel axis.
CHANNEL_AXIS = {"nchw": 0, "nhwc": -1, "cam": 0}


@pytest.fixture(autouse=True)
def _pyarrow():
    require("pyarrow")


def make_rows(start: int, count: int, signed: bool = True, shapes=SHAPES) -> list[RowResult]:
    """Rows whose values are small whole numbers of either sign: |value| ties everywhere,
    across signs too, so the top-k order depends on the tie rule."""
    rng = np.random.default_rng(start)
    return [RowResult(f"row-{index}", f"data/{index}.npy", None, index % 3, index % 3, 0.5,
                      {name: (rng.integers(-4, 5, shape) * 0.25).astype(np.float32)
                       for name, shape in shapes.items()}, signed=signed)
            for index in range(start, start + count)]


def written(folder: Path, rows: list[RowResult], store: Store, shard_rows: int = 3):
    writer = ResultWriter(folder, META, resume=False, shard_rows=shard_rows, store=store)
    writer.add(rows)
    writer.close({})
    return read_results(folder)


def by_hand_map(name: str, value: np.ndarray, signed: bool) -> np.ndarray:
    if name not in CHANNEL_AXIS:
        return value
    return (value if signed else np.abs(value)).sum(axis=CHANNEL_AXIS[name])


def argsort_top(value: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    flat = value.reshape(-1)
    order = np.argsort(-np.abs(flat), kind="stable")[:k]
    return order, flat[order]


@pytest.mark.parametrize("text, canonical", [("full", "full"), ("map", "map"),
                                             ("topk=1", "topk=1"), ("topk=007", "topk=7")])
def test_the_three_forms_parse_to_their_canonical_text(text, canonical):
    assert str(parse_store(text)) == canonical
    assert parse_store(canonical) == parse_store(text)


@pytest.mark.parametrize("text", ["", "Full", "maps", "topk", "topk=", "topk=0", "topk=-3",
                                  "topk=2.5", "topk=ten", "top=3", " map", "topk=3\nfull"])
def test_other_forms_are_one_line_errors(text):
    message = one_line_error(lambda: parse_store(text))
    assert message == f"--store must be full, map or topk=K (K a positive whole number), " \
                      f"not {text!r}"


@pytest.mark.parametrize("kind, k", [("topk", 0), ("topk", None), ("map", 3), ("sparse", None),
                                     ("topk", True), ("topk", 2.0), ("full", False)])
def test_a_bad_store_built_in_python_is_refused_naming_both_fields(kind, k):
    assert one_line_error(partial(Store, kind, k)) == (
        "--store must be full, map or topk=K (K a positive whole number), not "
        f"Store(kind={kind!r}, k={k!r})")


@pytest.mark.parametrize("signed", [True, False])
def test_map_shape_is_the_shape_row_map_gives(signed):
    for name, shape in SHAPES.items():
        value = make_rows(0, 1, signed)[0].attributions[name]
        assert map_shape(shape) == row_map(value, signed).shape
        assert map_shape(shape) == by_hand_map(name, value, signed).shape
        assert Kept.of(MAP, shape, np.float32) == Kept(shape, np.float32, map_shape(shape))
        assert Kept.of(FULL, shape, np.float32).stored == shape
        assert Kept.of(Store("topk", 50), shape, np.float32).stored == (min(50, value.size),)


@pytest.mark.parametrize("signed", [True, False])
def test_map_is_the_heatmaps_channel_sum(tmp_path, signed):
    rows = make_rows(0, 5, signed)
    rows[1].attributions["nchw"] = rows[1].attributions["nchw"].astype(np.float16)  # widened
    table = written(tmp_path, rows, MAP)
    layout = {"nchw": "NCHW", "nhwc": "NHWC", "cam": "NCHW"}
    for name, shape in SHAPES.items():
        got = attribution(table, name)
        full = [row.attributions[name].astype(np.float32) for row in rows]
        want = np.stack([by_hand_map(name, value, signed) for value in full])
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
        if name in layout:  # the heatmaps' own function gives the same numbers
            assert got.shape == (5, 5, 4)
            np.testing.assert_array_equal(
                got, np.stack([spatial_map(value, layout[name], signed) for value in full]))
        else:
            assert got.shape == (5, *shape)
        np.testing.assert_array_equal(dense(table, name), got)  # a map is its own dense form
    metadata = table.schema.metadata
    assert metadata[b"onnxplain.store"] == b"map"
    assert metadata[b"onnxplain.shape.nhwc"] == b"[5, 4]"
    assert metadata[b"onnxplain.attribution_shape.nhwc"] == b"[5, 4, 3]"
    assert metadata[b"onnxplain.signed"] == str(signed).lower().encode()


def test_signed_and_unsigned_maps_differ_where_values_cancel(tmp_path):
    value = np.zeros((3, 2, 2), np.float32)
    value[:, 0, 0] = [1.0, -1.0, 0.5]
    for signed, corner in ((True, 0.5), (False, 2.5)):
        row = RowResult("a", "a", None, 0, 0, 1.0, {"x": value}, signed=signed)
        table = written(tmp_path / str(signed), [row], MAP)
        assert attribution(table, "x")[0, 0, 0] == corner


@pytest.mark.parametrize("k", [1, 5, 60, 120, 500])
def test_topk_is_a_stable_argsort_of_magnitudes(tmp_path, k):
    rows = make_rows(0, 7)
    table = written(tmp_path, rows, Store("topk", k))
    for name, shape in SHAPES.items():
        size = int(np.prod(shape))
        indices, values = topk(table, name)
        assert indices.shape == values.shape == (7, min(k, size))
        assert indices.dtype == np.int64 and values.dtype == np.float32
        scattered = dense(table, name)
        assert scattered.shape == (7, *shape)
        for row, got_index, got_value, got_dense in zip(rows, indices, values, scattered,
                                                        strict=True):
            want_index, want_value = argsort_top(row.attributions[name], k)
            np.testing.assert_array_equal(got_index, want_index)
            np.testing.assert_array_equal(got_value, want_value)
            want_dense = np.zeros(size, np.float32)
            want_dense[want_index] = want_value
            np.testing.assert_array_equal(got_dense, want_dense.reshape(shape))
    assert table.schema.metadata[b"onnxplain.store"] == f"topk={k}".encode()
    assert b"onnxplain.shape.nchw" not in table.schema.metadata


def test_topk_orders_infinities_first_and_nan_last():
    value = np.array([1.0, np.nan, -3.0, 3.0, -np.inf, 0.0, -1.0, np.nan], np.float32)
    for k, want in ((8, [4, 2, 3, 0, 6, 5, 1, 7]), (3, [4, 2, 3]), (5, [4, 2, 3, 0, 6]),
                    (7, [4, 2, 3, 0, 6, 5, 1])):
        index, values = top_entries(value, k)
        assert index.tolist() == want
        np.testing.assert_array_equal(values, value[want])


@pytest.mark.parametrize("store", [FULL, MAP, Store("topk", 4)])
def test_each_store_round_trips_across_a_resumed_run(tmp_path, store):
    rows = make_rows(0, 11, signed=False)
    first = ResultWriter(tmp_path, META, resume=False, shard_rows=4, store=store)
    first.add(rows[:6])
    first.flush()  # stopped: shards of 4 and 2 rows
    second = ResultWriter(tmp_path, META, resume=True, shard_rows=4, store=store)
    assert second.committed() == {row.id for row in rows[:6]}
    wrong = make_rows(20, 1, signed=False, shapes={**SHAPES, "nchw": (3, 5, 5)})
    with pytest.raises(InputError, match=r"'nchw' has shape \[3, 5, 5\], earlier rows "
                                         r"\[3, 5, 4\]"):  # the layout was read back
        second.add(wrong)
    with pytest.raises(RuntimeError, match="row 'row-20' is signed, earlier rows unsigned"):
        second.add(make_rows(20, 1, signed=True))
    second.add(rows[6:])
    second.close({})
    table = read_results(tmp_path)
    assert table.column("id").to_pylist() == [row.id for row in rows]
    for name in SHAPES:
        values = [row.attributions[name] for row in rows]
        if store.kind == "topk":
            want = [argsort_top(value, 4) for value in values]
            got_index, got_value = topk(table, name)
            np.testing.assert_array_equal(got_index, np.stack([i for i, _ in want]))
            np.testing.assert_array_equal(got_value, np.stack([v for _, v in want]))
        else:
            want = values if store == FULL else [by_hand_map(name, v, False) for v in values]
            np.testing.assert_array_equal(attribution(table, name), np.stack(want))


def test_resume_with_another_store_is_refused_and_touches_nothing(tmp_path):
    for index, (before, after) in enumerate(((FULL, MAP), (MAP, Store("topk", 3)),
                                             (Store("topk", 3), Store("topk", 4)))):
        folder = tmp_path / str(index)
        writer = ResultWriter(folder, META, resume=False, shard_rows=2, store=before)
        writer.add(make_rows(0, 3))
        writer.flush()
        files = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
        message = one_line_error(partial(ResultWriter, folder, META, resume=True, store=after))
        assert message == (f"{folder} holds a run with another store ('{before}', now "
                           f"'{after}'): resume it with the same settings, or pass another "
                           "--out")
        assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} \
            == files


def test_an_empty_run_reads_back_with_its_store(tmp_path):
    writer = ResultWriter(tmp_path, META, resume=False, store=Store("topk", 2))
    writer.close({"rows": 0})
    table = read_results(tmp_path)
    assert len(table) == 0 and table.schema.metadata[b"onnxplain.store"] == b"topk=2"
    assert "no topk_index of 'x'" in one_line_error(lambda: topk(table, "x"))
    message = one_line_error(lambda: ResultWriter(tmp_path, META, resume=True, store=MAP))
    assert "another store ('topk=2', now 'map')" in message


def test_readers_say_what_the_results_hold(tmp_path):
    rows = make_rows(0, 2)
    top = written(tmp_path / "top", rows, Store("topk", 3))
    assert one_line_error(lambda: attribution(top, "nchw")) == (
        "the results keep the top k of each attribution of 'nchw' (--store topk=3): read "
        "them with topk() or dense()")
    full = written(tmp_path / "full", rows, FULL)
    assert one_line_error(lambda: topk(full, "nchw")) == (
        "the results have no topk_index of 'nchw', only inputs ['cam', 'embedding', 'nchw', "
        "'nhwc', 'tokens'] (--store full)")
    assert "no attribution of 'image'" in one_line_error(lambda: attribution(full, "image"))
    with pytest.raises(ValueError, match="'store' is the writer's"):
        ResultWriter(tmp_path / "other", {**META, "store": "map"}, resume=False)


def _channel_weighted_model(path: Path, weights: np.ndarray) -> Path:
    """image [batch, 3, 4, 5] -> logits [batch, 2] = mean over pixels of each channel @ W:
    d logit_t / d x[c, h, w] = W[c, t] / 20 at every pixel."""
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "W"], ["logits"])], "channel_weighted",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 4, 5])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(weights, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, path)
    return path


@pytest.mark.parametrize("abs_, store", [(True, "map"), (False, "map"), (False, "topk=3")])
def test_a_real_run_stores_the_saliency_maps_closed_form(tmp_path, abs_, store):
    from onnxplain.dataset import explain_dataset

    weights = np.array([[1.0, -2.0], [-3.0, 0.5], [0.25, 4.0]], np.float32)
    model = _channel_weighted_model(tmp_path / "model.onnx", weights)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((4, 3, 4, 5),
                                                                       np.float32))
    summary = explain_dataset(model, tmp_path / "x.npy", tmp_path / "out", "saliency",
                              target=1, store=store, progress=False, abs=abs_)
    assert summary["explained"] == 4
    table = read_results(tmp_path / "out")
    gradient = weights[:, 1] / 20  # per channel, the same at every pixel
    if store == "map":  # unsigned: |gradient| summed over channels, signed: the gradient
        per_pixel = np.abs(gradient).sum() if abs_ else gradient.sum()
        np.testing.assert_allclose(attribution(table, "image"),
                                   np.full((4, 4, 5), per_pixel), rtol=1e-6)
    else:  # channel 2 has the largest |gradient|: its first 3 pixels, ties to lower index
        indices, values = topk(table, "image")
        assert indices.tolist() == [[40, 41, 42]] * 4
        np.testing.assert_allclose(values, np.full((4, 3), gradient[2]), rtol=1e-6)
