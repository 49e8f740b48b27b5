"""open_source: image folders and .npy/.npz shards read lazily in batches. Oracles: the
arrays written, onnxplain.images.load_images on the same files, and the files' own listing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxplain.dataset import sources
from onnxplain.dataset.sources import open_source
from onnxplain.graph.model import Model
from onnxplain.images import ImagePreprocessing, default_preprocessing, load_images

from .conftest import joined, one_line_error, read_all, write_png


@pytest.fixture(scope="module")
def digits(zoo) -> Model:
    return Model.load(zoo.model_path("digits_cnn"))


@pytest.fixture(scope="module")
def rgb(zoo) -> Model:
    return Model.load(zoo.model_path("rgb_cnn"))


@pytest.fixture(scope="module")
def two_inputs() -> Model:
    """x float [batch, 3] and ids int64 [batch, 2] indexing a 5-row table: out [batch, 3]."""
    table = numpy_helper.from_array(np.arange(15, dtype=np.float32).reshape(5, 3), "table")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"]),
             helper.make_node("ReduceMean", ["rows"], ["mean"], axes=[1], keepdims=0),
             helper.make_node("Add", ["x", "mean"], ["out"])]
    graph = helper.make_graph(
        nodes, "two_inputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 2])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3])], [table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return Model.load(model)


def test_image_folder_ids_labels_order_and_pixels(digits, tmp_path):
    names = ["dog/2.png", "cat/1.png", "b.png", "cat/0.png", "dog/sub/3.png"]
    for seed, name in enumerate(names):
        write_png(tmp_path / name, (8, 8) if seed % 2 else (16, 12), seed=seed)
    (tmp_path / ".DS_Store").write_bytes(b"\0junk")  # hidden files are not data
    source = open_source(digits, tmp_path)
    assert source.root == tmp_path and source.count() == 5
    batches, errors = read_all(source, 2)
    assert errors == [] and [len(batch) for batch in batches] == [2, 2, 1]
    ids = [id for batch in batches for id in batch.ids]
    assert ids == ["b.png", "cat/0.png", "cat/1.png", "dog/2.png", "dog/sub/3.png"]
    assert [label for batch in batches for label in batch.labels] == [
        None, "cat", "cat", "dog", "dog"]
    assert [s for batch in batches for s in batch.sources] == [str(tmp_path / i) for i in ids]
    expected = load_images([tmp_path / i for i in ids], default_preprocessing(digits.inputs[0]))
    got = joined(batches, "image")
    assert got.dtype == np.float32 and got.shape == (5, 1, 8, 8)
    np.testing.assert_array_equal(got, expected)


def test_a_row_of_another_shape_starts_a_new_batch(any_size, tmp_path):
    sizes = [(8, 8), (8, 8), (6, 10), (8, 8)]  # (width, height)
    for seed, size in enumerate(sizes):
        write_png(tmp_path / f"{seed}.png", size, seed=seed)
    batches, errors = read_all(open_source(any_size, tmp_path), 4)
    assert errors == [] and [b.ids for b in batches] == [["0.png", "1.png"], ["2.png"],
                                                         ["3.png"]]
    assert [b.feeds["image"].shape for b in batches] == [(2, 1, 8, 8), (1, 1, 10, 6),
                                                         (1, 1, 8, 8)]
    prep = default_preprocessing(any_size.inputs[0])
    for batch in batches:
        expected = load_images([tmp_path / id for id in batch.ids], prep)
        np.testing.assert_array_equal(batch.feeds["image"], expected)


def test_image_preprocessing_is_used(rgb, tmp_path):
    for seed in range(3):
        write_png(tmp_path / f"{seed}.jpg", (40, 36), "RGB", seed)
    prep = ImagePreprocessing(resize=34, crop=(32, 32), mean=(0.5, 0.4, 0.3),
                              std=(0.2, 0.25, 0.3), channels="BGR")
    batches, errors = read_all(open_source(rgb, tmp_path, {"image": prep}), 8)
    assert errors == [] and len(batches) == 1 and batches[0].labels == [None] * 3
    expected = load_images([tmp_path / f"{seed}.jpg" for seed in range(3)], prep)
    np.testing.assert_array_equal(batches[0].feeds["image"], expected)
    one_line_error(lambda: open_source(rgb, tmp_path, {"pixels": prep}))


def test_npy_shards_in_order_across_batches(digits, tmp_path):
    rng = np.random.default_rng(1)
    first = rng.standard_normal((5, 1, 8, 8))  # float64: cast to the model's float32
    second = rng.standard_normal((3, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "a.npy", first)
    (tmp_path / "more").mkdir()
    np.save(tmp_path / "more" / "b.npy", second)
    source = open_source(digits, tmp_path)
    assert source.count() == 8
    batches, errors = read_all(source, 3)
    assert errors == [] and [len(batch) for batch in batches] == [3, 3, 2]
    got = joined(batches, "image")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.concatenate([first.astype(np.float32), second]))
    ids = [id for batch in batches for id in batch.ids]
    assert ids == [f"a.npy#{i}" for i in range(5)] + [f"more/b.npy#{i}" for i in range(3)]
    assert batches[0].sources[1] == f"{tmp_path / 'a.npy'}#1"
    assert all(label is None for batch in batches for label in batch.labels)
    # One file given alone: ids relative to its folder.
    single, _ = read_all(open_source(digits, tmp_path / "more" / "b.npy"), 10)
    assert single[0].ids == ["b.npy#0", "b.npy#1", "b.npy#2"]


def test_npy_is_memory_mapped(digits, tmp_path, monkeypatch):
    np.save(tmp_path / "a.npy", np.zeros((4, 1, 8, 8), np.float32))
    modes = []
    load = np.load

    def spy(*args, **kwargs):
        modes.append(kwargs.get("mmap_mode"))
        return load(*args, **kwargs)

    monkeypatch.setattr(sources.np, "load", spy)
    read_all(open_source(digits, tmp_path), 2)
    assert modes == ["r"]


def test_npz_shards_two_inputs(two_inputs, tmp_path):
    rng = np.random.default_rng(2)
    parts = [(rng.standard_normal((4, 3)).astype(np.float32),
              rng.integers(0, 5, (4, 2)).astype(np.int32)),
             (rng.standard_normal((3, 3)).astype(np.float32),
              rng.integers(0, 5, (3, 2)).astype(np.int64))]
    np.savez(tmp_path / "0.npz", x=parts[0][0], ids=parts[0][1])
    np.savez_compressed(tmp_path / "1.npz", ids=parts[1][1], x=parts[1][0])
    source = open_source(two_inputs, tmp_path)
    assert source.count() == 7
    batches, errors = read_all(source, 3)
    assert errors == [] and [len(batch) for batch in batches] == [3, 3, 1]
    np.testing.assert_array_equal(joined(batches, "x"), np.concatenate([p[0] for p in parts]))
    ids = joined(batches, "ids")
    assert ids.dtype == np.int64  # int32 ids cast to the model's type
    np.testing.assert_array_equal(ids, np.concatenate([p[1] for p in parts]))
    assert [id for batch in batches for id in batch.ids] == (
        [f"0.npz#{i}" for i in range(4)] + [f"1.npz#{i}" for i in range(3)])


def test_skip_leaves_rows_out_without_decoding(digits, tmp_path, monkeypatch):
    for seed in range(4):
        write_png(tmp_path / "c" / f"{seed}.png", (8, 8), seed=seed)
    (tmp_path / "c" / "broken.png").write_bytes(b"not a png at all")
    decoded = []
    load = sources.load_image

    def counted(path, prep):
        decoded.append(Path(path).name)
        return load(path, prep)

    monkeypatch.setattr(sources, "load_image", counted)
    source = open_source(digits, tmp_path)
    skip = {"c/1.png", "c/broken.png"}
    batches, errors = read_all(source, 10, skip)
    assert errors == [] and batches[0].ids == ["c/0.png", "c/2.png", "c/3.png"]
    assert decoded == ["0.png", "2.png", "3.png"]
    # Lazy: the first batch of 1 decodes one image only.
    decoded.clear()
    next(iter(source.batches(1, skip)))
    assert decoded == ["0.png"]


def test_skip_rows_of_shards(two_inputs, tmp_path):
    x = np.arange(15, dtype=np.float32).reshape(5, 3)
    ids = np.arange(10).reshape(5, 2) % 5
    np.savez_compressed(tmp_path / "s.npz", x=x, ids=ids)
    batches, errors = read_all(open_source(two_inputs, tmp_path), 2, {"s.npz#0", "s.npz#3"})
    assert errors == [] and [id for b in batches for id in b.ids] == ["s.npz#1", "s.npz#2",
                                                                      "s.npz#4"]
    np.testing.assert_array_equal(joined(batches, "x"), x[[1, 2, 4]])
    np.testing.assert_array_equal(joined(batches, "ids"), ids[[1, 2, 4]])


def test_bad_rows_become_errors_and_the_run_goes_on(digits, tmp_path):
    write_png(tmp_path / "a" / "0.png", (8, 8))
    (tmp_path / "a" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    write_png(tmp_path / "a" / "2.png", (8, 8), seed=2)
    batches, errors = read_all(open_source(digits, tmp_path), 2)
    assert [id for b in batches for id in b.ids] == ["a/0.png", "a/2.png"]
    assert [len(b) for b in batches] == [2]  # the bad row does not take a place in a batch
    assert [(e.id, e.source) for e in errors] == [("a/1.png", str(tmp_path / "a" / "1.png"))]
    assert "cannot read image" in errors[0].reason and "\n" not in errors[0].reason


@pytest.mark.filterwarnings("error::onnxplain.errors.InputWarning")
def test_nan_and_wrong_shape_rows(digits, tmp_path):
    good = np.random.default_rng(3).standard_normal((4, 1, 8, 8)).astype(np.float32)
    good[2, 0, 3, 3] = np.nan
    np.save(tmp_path / "a.npy", good)
    np.savez(tmp_path / "b.npz", image=np.zeros((2, 1, 9, 9), np.float32))
    batches, errors = read_all(open_source(digits, tmp_path), 10)
    assert batches[0].ids == ["a.npy#0", "a.npy#1", "a.npy#3"]
    np.testing.assert_array_equal(batches[0].feeds["image"], good[[0, 1, 3]])
    assert [e.id for e in errors] == ["a.npy#2", "b.npz#0", "b.npz#1"]
    assert errors[0].reason == "input 'image' holds 1 NaN or Inf values"
    assert "expects size 8 on axis 2" in errors[1].reason and "(1, 1, 9, 9)" in errors[1].reason


def test_token_ids_out_of_range_is_a_row_error(two_inputs, tmp_path):
    ids = np.array([[0, 1], [4, 7], [2, 3]])
    np.savez(tmp_path / "t.npz", x=np.zeros((3, 3), np.float32), ids=ids)
    batches, errors = read_all(open_source(two_inputs, tmp_path), 10)
    assert batches[0].ids == ["t.npz#0", "t.npz#2"]
    assert [e.id for e in errors] == ["t.npz#1"] and "holds 7" in errors[0].reason


def test_errors_alone_are_handed_out_bounded(digits, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "MAX_PENDING_ERRORS", 2)
    rows = np.zeros((5, 1, 8, 8), np.float32)
    rows[:3] = np.inf
    np.save(tmp_path / "a.npy", rows)
    out = [(len(batch), [e.id for e in errs]) for batch, errs in
           open_source(digits, tmp_path).batches(4)]
    assert out == [(0, ["a.npy#0", "a.npy#1"]), (2, ["a.npy#2"])]


def test_refusals_are_one_line(digits, two_inputs, tmp_path):
    message = one_line_error(lambda: open_source(digits, tmp_path / "missing"))
    assert "does not exist" in message
    (tmp_path / "empty").mkdir()
    assert "no image" in one_line_error(lambda: open_source(digits, tmp_path / "empty"))
    mixed = tmp_path / "mixed"
    write_png(mixed / "a.png", (8, 8))
    np.save(mixed / "b.npy", np.zeros((1, 1, 8, 8), np.float32))
    assert "mixes images" in one_line_error(lambda: open_source(digits, mixed))
    (tmp_path / "notes.txt").write_text("hello")
    assert "notes.txt" in one_line_error(lambda: open_source(digits, tmp_path / "notes.txt"))
    assert "image" in one_line_error(lambda: open_source(two_inputs, mixed / "a.png"))
    assert "x (float32" in one_line_error(lambda: open_source(two_inputs, mixed / "b.npy"))
    np.savez(tmp_path / "lacks.npz", x=np.zeros((2, 3), np.float32))
    assert "lacks the model input 'ids'" in one_line_error(
        lambda: open_source(two_inputs, tmp_path / "lacks.npz"))
    np.savez(tmp_path / "rows.npz", x=np.zeros((2, 3), np.float32), ids=np.zeros((3, 2)))
    assert "disagree" in one_line_error(lambda: open_source(two_inputs, tmp_path / "rows.npz"))
    np.savez(tmp_path / "extra.npz", image=np.zeros((2, 1, 8, 8)), label=np.zeros(2))
    assert "'label'" in one_line_error(lambda: open_source(digits, tmp_path / "extra.npz"))
    (tmp_path / "junk.npy").write_bytes(b"junk")
    assert "junk.npy" in one_line_error(lambda: open_source(digits, tmp_path / "junk.npy"))
    source = open_source(digits, mixed / "b.npy")
    assert "positive" in one_line_error(lambda: next(source.batches(0)))


def test_damaged_npz_gives_errors_never_wrong_rows(digits, tmp_path):
    """Deflated data damaged mid-member: zip's CRC fails only at the member's end, so the
    shard's rows must all fail (with the reason) rather than come through garbled; the
    next shard's rows come through."""
    rows = np.random.default_rng(4).standard_normal((500, 1, 8, 8)).astype(np.float32)
    np.savez_compressed(tmp_path / "a.npz", image=rows)
    data = bytearray((tmp_path / "a.npz").read_bytes())
    middle = len(data) // 2
    data[middle:middle + 40] = bytes(40)
    (tmp_path / "a.npz").write_bytes(bytes(data))
    np.save(tmp_path / "b.npy", np.ones((2, 1, 8, 8), np.float32))
    source = open_source(digits, tmp_path)  # headers intact: the damage is found on reading
    batches, errors = read_all(source, 100)
    assert [id for b in batches for id in b.ids] == ["b.npy#0", "b.npy#1"]
    assert [e.id for e in errors] == [f"a.npz#{i}" for i in range(500)]
    assert "cannot read" in errors[0].reason and "a.npz" in errors[0].reason


def _in_windows(source, windows, skip=()):
    """ids, values and error ids of every window's batches, one window after another."""
    ids, values, errors = [], [], []
    for window in windows:
        for batch, errs in source.batches(3, skip, window):
            ids += batch.ids
            values += [batch.feeds["image"]] if len(batch) else []
            errors += [error.id for error in errs]
    return ids, (np.concatenate(values) if values else None), errors


def test_windows_put_together_read_what_the_whole_source_reads(digits, tmp_path):
    """Windows at any cut, and those Source.windows gives workers, over .npy, .npz (with a
    NaN row) and images (one unreadable): the same ids, values and errors as reading the
    whole source, with a skip set too; .npz shards are never cut (they do not seek)."""
    rng = np.random.default_rng(7)
    arrays = tmp_path / "arrays"
    arrays.mkdir()
    np.save(arrays / "a.npy", rng.standard_normal((7, 1, 8, 8)).astype(np.float32))
    shard = rng.standard_normal((6, 1, 8, 8)).astype(np.float32)
    shard[2, 0, 1, 1] = np.nan
    np.savez(arrays / "b.npz", image=shard)
    np.save(arrays / "c.npy", rng.standard_normal((4, 1, 8, 8)).astype(np.float32))
    images = tmp_path / "images"
    for index in range(5):
        write_png(images / f"k{index % 2}" / f"{index}.png", (8, 8), seed=index)
    (images / "k0" / "broken.png").write_bytes(b"no png")
    for root, skip in ((arrays, {"a.npy#1", "b.npz#4", "c.npy#0"}), (images, {"k1/1.png"})):
        source = open_source(digits, root)
        whole = _in_windows(source, [None], skip)
        rows = source.count()
        cuts = [range(0, 5), range(5, 9), range(9, rows)]
        for windows in (cuts, source.windows(4), source.windows(1), [range(0, rows)]):
            assert [w.start for w in windows[1:]] == [w.stop for w in windows[:-1]]
            got = _in_windows(source, windows, skip)
            assert got[0] == whole[0] and got[2] == whole[2]
            np.testing.assert_array_equal(got[1], whole[1])
    windows = open_source(digits, arrays).windows(4)
    assert range(7, 13) in windows  # b.npz whole, in one window of its own
    assert all(w.stop <= 7 or w.start >= 13 for w in windows if w != range(7, 13))


def test_a_damaged_npz_read_by_windows_fails_only_its_own_rows(digits, tmp_path):
    rows = np.random.default_rng(4).standard_normal((50, 1, 8, 8)).astype(np.float32)
    np.savez_compressed(tmp_path / "a.npz", image=rows)
    data = bytearray((tmp_path / "a.npz").read_bytes())
    data[len(data) // 2:len(data) // 2 + 40] = bytes(40)
    (tmp_path / "a.npz").write_bytes(bytes(data))
    source = open_source(digits, tmp_path)
    ids, _, errors = _in_windows(source, [range(10, 20)])
    assert ids == [] and errors == [f"a.npz#{i}" for i in range(10, 20)]
