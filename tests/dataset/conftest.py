"""What the dataset tests share: a model of any image size, PNG writing, reading a source
whole, and the one-line error check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper
from PIL import Image

from onnxplain.errors import InputError
from onnxplain.graph.model import Model


@pytest.fixture(scope="module")
def any_size() -> Model:
    """A grey image input of any height and width: image [batch, 1, h, w] -> mean [batch, 1]."""
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["mean"])], "any_size",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, "h", "w"])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["batch", 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return Model.load(model)


def write_png(path: Path, size: tuple[int, int], mode: str = "L", seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    pixels = np.random.default_rng(seed).integers(0, 256, channels, dtype=np.uint8)
    Image.fromarray(pixels, mode).save(path)
    return path


def read_all(source, rows: int, skip=()):
    """Every batch's (size, ids, labels, sources, feeds) and every error, in order."""
    out, errors = [], []
    for batch, errs in source.batches(rows, skip):
        out.append(batch)
        errors.extend(errs)
    return out, errors


def joined(batches, name: str) -> np.ndarray:
    return np.concatenate([batch.feeds[name] for batch in batches if len(batch)])


def one_line_error(call) -> str:
    with pytest.raises(InputError) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message
    return message


def digits_folder(zoo, folder: Path, count: int = 10) -> list[Path]:
    """`count` 8x8 grey PNGs of the zoo's digits in class sub-folders."""
    images = zoo.sample("digits_cnn")["image"]
    paths = []
    for index in range(count):
        pixels = images[index % len(images), 0]
        scaled = (255 * (pixels - pixels.min()) / max(np.ptp(pixels), 1e-6)).astype(np.uint8)
        path = folder / f"class{index % 3}" / f"img{index:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scaled, mode="L").save(path)
        paths.append(path)
    return sorted(paths)


def write_parquet(path: Path, columns: dict, row_group_size: int | None = None,
                  **options) -> Path:
    """`columns` (name -> values or an Arrow array) written as one Parquet file; `options`
    go to pyarrow.parquet.write_table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size, **options)
    return path


def read_rows(source, rows: int, skip=()):
    """Every batch's ids, labels and feeds joined, and every error."""
    ids, labels, feeds, errors = [], [], {}, []
    for batch, batch_errors in source.batches(rows, skip):
        ids += batch.ids
        labels += batch.labels
        errors += batch_errors
        for name, value in batch.feeds.items():
            feeds.setdefault(name, []).append(value)
    return ids, labels, {name: np.concatenate(v) for name, v in feeds.items()}, errors


def damage_column(path: Path, group: int, column: str) -> None:
    """Flips the last byte of one column's data in one row group, so that its last page fails
    its checksum (write the file with write_page_checksum=True, compression="none" and
    use_dictionary=False, so that this byte is a value: a byte in the middle may fall in a
    page header's statistics, which the checksum does not cover)."""
    import pyarrow.parquet as pq

    metadata = pq.ParquetFile(path).metadata
    index = metadata.schema.to_arrow_schema().get_field_index(column)
    chunk = metadata.row_group(group).column(index)
    data = bytearray(path.read_bytes())
    data[chunk.data_page_offset + chunk.total_compressed_size - 1] ^= 0xFF
    path.write_bytes(bytes(data))
