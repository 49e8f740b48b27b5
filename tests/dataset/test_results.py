"""The dataset run's Parquet writer: what is read back is what was added, bit for bit, once;
an earlier run is refused or resumed with the same meta only; a killed writer leaves whole
shards only. The oracle is always re-reading the files written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from onnxplain.dataset.results import ResultWriter, attribution, read_errors, read_results
from onnxplain.dataset.rows import RowError, RowResult
from onnxplain.dataset.store import MAP
from onnxplain.errors import InputError
from tests.conftest import require

from .conftest import one_line_error

META = {"method": "saliency", "options": '{"abs": true}', "model": "abc123"}
SHAPES = {"image": (1, 4, 3), "mask": (5,)}


@pytest.fixture(scope="module")
def pq():
    require("pyarrow")
    import pyarrow.parquet

    return pyarrow.parquet


def make_rows(start: int, count: int) -> list[RowResult]:
    """Rows with nulls in every nullable column and floats that only an exact copy keeps:
    NaN, -0.0, infinities, subnormals."""
    rng = np.random.default_rng(start)
    rows = []
    for index in range(start, start + count):
        image = rng.standard_normal(SHAPES["image"]).astype(np.float32)
        image.flat[:4] = [np.nan, -0.0, np.inf, np.float32(1e-45)]
        mask = rng.standard_normal(SHAPES["mask"])  # float64: stored as float64
        mask[0] = 5e-324
        rows.append(RowResult(
            f"row-{index}", f"data/{index}.png", None if index % 3 == 0 else f"class{index % 2}",
            None if index % 4 == 0 else index % 10, index % 7, float(rng.random()),
            {"image": image, "mask": mask}, None if index % 2 else float(rng.standard_normal())))
    return rows


def check_equal(table, rows: list[RowResult]) -> None:
    """The table holds exactly `rows`, in order, every value bit for bit."""
    assert table.column("id").to_pylist() == [row.id for row in rows]
    for name in ("source", "label", "target", "predicted", "score", "delta"):
        assert table.column(name).to_pylist() == [getattr(row, name) for row in rows], name
    for name, shape in SHAPES.items():
        got = attribution(table, name)
        want = np.stack([row.attributions[name] for row in rows])
        assert got.shape == (len(rows), *shape) and got.dtype == want.dtype
        assert got.tobytes() == want.tobytes()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def parts(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.glob("part-*.parquet"))


def test_rows_round_trip_through_shards(tmp_path, pq):
    rows = make_rows(0, 10)
    errors = [RowError("bad-1", "data/bad1.png", "unreadable image"),
              RowError("bad-2", "data/bad2.png", "NaN values")]
    writer = ResultWriter(tmp_path, META, resume=False, shard_rows=4)
    for start in range(0, 10, 3):  # shards fill across add() calls
        writer.add(rows[start:start + 3])
    writer.add_errors(errors)
    assert parts(tmp_path / "results") == ["part-00000.parquet", "part-00001.parquet"]
    writer.close({"rows": 12, "errors": 2})
    assert parts(tmp_path / "results") == [f"part-0000{n}.parquet" for n in range(3)]
    check_equal(read_results(tmp_path), rows)
    shard = pq.read_table(tmp_path / "results" / "part-00002.parquet")
    assert len(shard) == 2
    assert shard.schema.metadata[b"onnxplain.method"] == b"saliency"
    assert json.loads(shard.schema.metadata[b"onnxplain.shape.image"]) == [1, 4, 3]
    assert json.loads(shard.schema.metadata[b"onnxplain.attribution_shape.image"]) == [1, 4, 3]
    assert shard.schema.metadata[b"onnxplain.store"] == b"full"
    assert shard.schema.metadata[b"onnxplain.signed"] == b"true"
    whole = pq.read_table(tmp_path / "errors.parquet")
    assert whole.to_pylist() == [vars(error) for error in errors]
    assert read_errors(tmp_path).to_pylist() == whole.to_pylist()
    assert json.loads((tmp_path / "summary.json").read_text()) == {"rows": 12, "errors": 2}
    assert json.loads((tmp_path / "run.json").read_text())["meta"] == {**META, "store": "full"}


def test_resume_continues_and_never_writes_a_row_twice(tmp_path):
    rows = make_rows(0, 15)
    first = ResultWriter(tmp_path, META, resume=False, shard_rows=4)
    first.add(rows[:10])
    first.add_errors([RowError("bad-1", "data/bad1.png", "wrong shape")])
    first.flush()  # no close: the run stopped
    second = ResultWriter(tmp_path, META, resume=True, shard_rows=4)
    assert second.committed() == {row.id for row in rows[:10]} | {"bad-1"}
    with pytest.raises(RuntimeError, match="row-3"):
        second.add(rows[3:4])
    with pytest.raises(RuntimeError, match="bad-1"):
        second.add_errors([RowError("bad-1", "data/bad1.png", "again")])
    second.add(rows[10:])
    second.close({})
    names = parts(tmp_path / "results")
    assert names == [f"part-0000{n}.parquet" for n in range(5)]  # 4+4+2, then 4+1
    check_equal(read_results(tmp_path), rows)
    assert read_errors(tmp_path).column("id").to_pylist() == ["bad-1"]


def test_queued_ids_and_batch_duplicates_are_refused(tmp_path):
    writer = ResultWriter(tmp_path, META, resume=False, shard_rows=100)
    rows = make_rows(0, 3)
    with pytest.raises(RuntimeError, match="row-1"):
        writer.add([rows[1], rows[1]])
    writer.add(rows[:2])
    with pytest.raises(RuntimeError, match="row-0"):
        writer.add_errors([RowError("row-0", "x", "late")])
    writer.add(rows[2:])
    writer.close({})
    check_equal(read_results(tmp_path), rows)


def test_resume_with_other_meta_is_refused_and_touches_nothing(tmp_path):
    writer = ResultWriter(tmp_path, META, resume=False, shard_rows=4)
    writer.add(make_rows(0, 5))
    writer.close({})
    before = snapshot(tmp_path)
    for other, key in (({**META, "options": '{"abs": false}'}, "options"),
                       ({**META, "target": "3"}, "target"),
                       ({"method": "saliency", "options": META["options"]}, "model")):
        with pytest.raises(InputError, match=f"another {key} ") as caught:
            ResultWriter(tmp_path, other, resume=True)
        assert "\n" not in str(caught.value)
    assert snapshot(tmp_path) == before


def test_shard_meta_is_checked_without_run_file(tmp_path):
    writer = ResultWriter(tmp_path, META, resume=False, shard_rows=2)
    writer.add(make_rows(0, 4))
    writer.flush()
    (tmp_path / "run.json").unlink()
    with pytest.raises(InputError, match="part-00000.parquet holds a run with another method"):
        ResultWriter(tmp_path, {**META, "method": "gradient_x_input"}, resume=True)
    assert ResultWriter(tmp_path, META, resume=True).committed() == {f"row-{i}" for i in range(4)}


def test_earlier_run_without_resume_is_refused_byte_identical(tmp_path):
    writer = ResultWriter(tmp_path, META, resume=False, shard_rows=4)
    writer.add(make_rows(0, 6))
    writer.flush()
    (tmp_path / "results" / ".onnxplain-stale.parquet").write_bytes(b"half a shard")
    before = snapshot(tmp_path)
    with pytest.raises(InputError) as caught:
        ResultWriter(tmp_path, META, resume=False)
    assert str(caught.value) == (f"{tmp_path} holds results of an earlier run: pass --resume "
                                 "to continue it, or another --out")
    assert snapshot(tmp_path) == before


def test_killed_writer_loses_only_queued_rows(tmp_path):
    rows = make_rows(0, 10)
    abandoned = ResultWriter(tmp_path, META, resume=False, shard_rows=4)
    abandoned.add(rows)  # two shards written, two rows queued: never flushed
    del abandoned
    # What a process killed inside atomic_write leaves: a half-written temporary file.
    stale = tmp_path / "results" / ".onnxplain-k1ll3d.parquet"
    stale.write_bytes(b"PAR1 truncated")
    check_equal(read_results(tmp_path), rows[:8])
    resumed = ResultWriter(tmp_path, META, resume=True, shard_rows=4)
    assert not stale.exists()
    todo = [row for row in rows if row.id not in resumed.committed()]
    assert [row.id for row in todo] == ["row-8", "row-9"]
    resumed.add(todo)
    resumed.close({})
    check_equal(read_results(tmp_path), rows)


def test_failed_write_keeps_rows_queued(tmp_path, pq, monkeypatch):
    writer = ResultWriter(tmp_path, META, resume=False, shard_rows=4)
    rows = make_rows(0, 4)
    real = pq.write_table

    def interrupted(table, where, **kwargs):
        where.write(b"PAR1 half")
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", interrupted)
    with pytest.raises(KeyboardInterrupt):
        writer.add(rows)
    assert writer.committed() == set()
    assert [p.name for p in (tmp_path / "results").iterdir()] == []  # temporary removed
    monkeypatch.setattr(pq, "write_table", real)
    writer.flush()
    check_equal(read_results(tmp_path), rows)


def test_one_shape_per_input(tmp_path):
    writer = ResultWriter(tmp_path, META, resume=False, shard_rows=4)
    rows = make_rows(0, 2)
    rows[1].attributions["image"] = rows[1].attributions["image"][..., :2]
    with pytest.raises(InputError, match=r"'image' has shape \[1, 4, 2\], earlier rows"):
        writer.add(rows)
    writer.add(rows[:1])  # the refused call queued nothing
    writer.close({})
    check_equal(read_results(tmp_path), rows[:1])


def test_empty_run_closes_and_resumes(tmp_path):
    writer = ResultWriter(tmp_path, META, resume=False)
    writer.close({"rows": 0})
    assert len(read_results(tmp_path)) == 0 and len(read_errors(tmp_path)) == 0
    assert ResultWriter(tmp_path, META, resume=True).committed() == set()
    other = {**META, "method": "occlusion"}
    with pytest.raises(InputError, match=r"another method \('saliency', now 'occlusion'\)"):
        ResultWriter(tmp_path, other, resume=True)  # no shards: run.json is the record
    with pytest.raises(InputError, match="holds results of an earlier run"):
        ResultWriter(tmp_path, META, resume=False)


def test_missing_pyarrow_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now fails
    message = ("explain-dataset writes Parquet: install pyarrow "
               "(pip install 'onnxplain[dataset]')")
    with pytest.raises(InputError) as caught:
        ResultWriter(tmp_path, META, resume=False)
    assert str(caught.value) == message
    with pytest.raises(InputError, match="install pyarrow"):
        read_results(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_damaged_shard_is_one_line(tmp_path):
    writer = ResultWriter(tmp_path, META, resume=False, shard_rows=2)
    writer.add(make_rows(0, 4))
    (tmp_path / "results" / "part-00001.parquet").write_bytes(b"not parquet at all")
    for call in (lambda: ResultWriter(tmp_path, META, resume=True),
                 lambda: read_results(tmp_path)):
        with pytest.raises(InputError, match="part-00001.parquet is not a readable") as caught:
            call()
        assert "\n" not in str(caught.value)


def test_meta_keys_are_refused_only_where_they_name_the_layout(tmp_path):
    """'signed_by' starts like the layout key 'signed' without being it: run meta."""
    meta = {**META, "signed_by": "alice", "shaped": "no"}
    writer = ResultWriter(tmp_path, meta, resume=False, shard_rows=2)
    writer.add(make_rows(0, 3))
    writer.flush()
    resumed = ResultWriter(tmp_path, meta, resume=True, shard_rows=2)
    assert resumed.committed() == {"row-0", "row-1", "row-2"}
    message = one_line_error(lambda: ResultWriter(tmp_path, {**meta, "signed_by": "bob"},
                                                  resume=True))
    assert "another signed_by ('alice', now 'bob')" in message
    for key in ("signed", "shape.image", "attribution_shape.x"):
        with pytest.raises(ValueError, match=f"run meta key '{key}' names"):
            ResultWriter(tmp_path / key, {**META, key: "1"}, resume=False)


def forget_store(folder: Path, pq) -> None:
    """What a run from before --store wrote: no store in run.json or the shards, and of the
    layout only onnxplain.shape.<name>."""
    run = json.loads((folder / "run.json").read_text())
    del run["meta"]["store"]
    (folder / "run.json").write_text(json.dumps(run))
    for shard in (folder / "results").glob("part-*.parquet"):
        table = pq.read_table(shard)
        metadata = {key: value for key, value in table.schema.metadata.items()
                    if key != b"onnxplain.store" and key != b"onnxplain.signed"
                    and not key.startswith(b"onnxplain.attribution_shape.")}
        pq.write_table(table.replace_schema_metadata(metadata), shard)


def test_a_run_from_before_store_resumes_as_full(tmp_path, pq):
    rows = make_rows(0, 9)
    first = ResultWriter(tmp_path, META, resume=False, shard_rows=4)
    first.add(rows[:8])
    first.flush()
    forget_store(tmp_path, pq)
    message = one_line_error(lambda: ResultWriter(tmp_path, META, resume=True, store=MAP))
    assert "holds a run with another store ('full', now 'map')" in message
    resumed = ResultWriter(tmp_path, META, resume=True, shard_rows=4)
    assert resumed.committed() == {row.id for row in rows[:8]}
    resumed.add(rows[8:])
    resumed.close({})
    check_equal(read_results(tmp_path), rows)  # old and new shards read as one


def test_a_shard_without_shapes_is_one_line_naming_it(tmp_path, pq):
    writer = ResultWriter(tmp_path, META, resume=False, shard_rows=2)
    writer.add(make_rows(0, 4))
    writer.flush()
    for shard in (tmp_path / "results").glob("part-*.parquet"):
        table = pq.read_table(shard)
        metadata = {key: value for key, value in table.schema.metadata.items()
                    if b"shape." not in key}
        pq.write_table(table.replace_schema_metadata(metadata), shard)
    last = tmp_path / "results" / "part-00001.parquet"
    assert one_line_error(lambda: ResultWriter(tmp_path, META, resume=True)) == (
        "no shape of the attribution of 'image' (onnxplain.attribution_shape.image) in the "
        f"schema metadata of {last}: not written by explain-dataset")
    table = read_results(tmp_path)
    assert one_line_error(lambda: attribution(table, "mask")) == (
        "no shape of the attribution of 'mask' (onnxplain.shape.mask) in the schema "
        "metadata of the results: not written by explain-dataset")
