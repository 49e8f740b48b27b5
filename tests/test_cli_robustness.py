"""Hostile inputs to the command line (issue 18): lying or pickled array files, corrupt images,
unwritable or overlong output names, NaN options, unbounded work, failures that must leave
nothing behind, and internal errors. Every case ends in one `error:` line with exit 2 (70 for
a bug in onnxplain), and the user's files keep their bytes."""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxplain.errors import InputError
from tests.cli_helpers import digests, run


def _model(nodes, inputs, output_shape, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "m", inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)], list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def conv_model(name: str = "x") -> onnx.ModelProto:
    """`name` [batch, 3, 8, 8] -> Conv -> global average -> [batch, 2]: an image classifier."""
    weights = np.random.default_rng(0).standard_normal((2, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", [name, "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["y"])]
    image = helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 3, 8, 8])
    return _model(nodes, [image], ["batch", 2], [numpy_helper.from_array(weights, "w")])


def volume_model(row: tuple[int, ...]) -> onnx.ModelProto:
    """x [batch, *row] (4-D rows: a 5-D input) -> Flatten -> MatMul -> [batch, 2]."""
    weights = np.ones((int(np.prod(row)), 2), np.float32)
    nodes = [helper.make_node("Flatten", ["x"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["y"])]
    volume = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *row])
    return _model(nodes, [volume], ["batch", 2], [numpy_helper.from_array(weights, "w")])


def failing_model() -> onnx.ModelProto:
    """Valid ONNX that fails inside ONNX Runtime at run time (a Gather index out of range)."""
    indices = numpy_helper.from_array(np.array([0, 1, 2, 10], np.int64), "i")
    nodes = [helper.make_node("Gather", ["x", "i"], ["y"], axis=1, name="gather")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    return _model(nodes, [x], ["batch", 4], [indices])


def rejected_model() -> onnx.ModelProto:
    """Valid-looking ONNX that ONNX Runtime refuses to load (Relu on uint16)."""
    nodes = [helper.make_node("Cast", ["x"], ["u"], to=TensorProto.UINT16),
             helper.make_node("Relu", ["u"], ["r"]),
             helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    return _model(nodes, [x], ["batch", 4])


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    onnx.save(conv_model(), tmp_path / "conv.onnx")
    onnx.save(failing_model(), tmp_path / "fails.onnx")
    onnx.save(rejected_model(), tmp_path / "rejected.onnx")
    rng = np.random.default_rng(1)
    np.save(tmp_path / "image.npy", rng.standard_normal((1, 3, 8, 8)).astype(np.float32))
    np.save(tmp_path / "x4.npy", np.ones((1, 4), np.float32))
    return tmp_path


def one_error(result, *parts: str, code: int = 2) -> str:
    """The one stderr line of a failed run, checked to contain `parts`."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def explain(workdir: Path, model: str, *args: str):
    return run("explain", str(workdir / model), *args, "-q")


# ---- input files ------------------------------------------------------------------------

class Planted:
    """Unpickling this writes a file: proof that a pickle was loaded."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "unpickled"))


def test_pickled_npz_member_is_refused_and_never_unpickled(workdir):
    marker = workdir / "unpickled.txt"
    objects = np.array([Planted(str(marker))], dtype=object)
    np.savez(workdir / "evil.npz", x=objects)
    before = digests(workdir)
    result = explain(workdir, "conv.onnx", "-i", str(workdir / "evil.npz"), "-o",
                     str(workdir / "out"))
    one_error(result, "evil.npz", "member 'x'", "never unpickles")
    assert not marker.exists() and not (workdir / "out").exists()
    assert digests(workdir) == before


def test_pickled_npy_is_refused_and_never_unpickled(workdir):
    marker = workdir / "unpickled.txt"
    np.save(workdir / "evil.npy", np.array([Planted(str(marker))], dtype=object))
    result = explain(workdir, "conv.onnx", "-i", str(workdir / "evil.npy"))
    one_error(result, "evil.npy", "never unpickles")
    assert not marker.exists()


@pytest.mark.parametrize("compressed", [False, True])
def test_corrupt_npz_member_is_one_line(workdir, compressed):
    image = np.load(workdir / "image.npy")
    path = workdir / "broken.npz"
    (np.savez_compressed if compressed else np.savez)(path, x=image)
    data = bytearray(path.read_bytes())
    # Past the local header (30 bytes, the name, a zip64 field), inside the array's bytes.
    data[220:284] = bytes(64)
    path.write_bytes(bytes(data))
    before = digests(workdir)
    result = explain(workdir, "conv.onnx", "-i", str(path), "-o", str(workdir / "out"))
    one_error(result, "cannot read input file", "broken.npz")
    assert digests(workdir) == before and not (workdir / "out").exists()


def _npy_with_header(path: Path, shape: tuple[int, ...], payload: bytes) -> None:
    stream = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(stream, header)
    path.write_bytes(stream.getvalue() + payload)


@pytest.mark.parametrize("shape", [(10**13,), (1, 3, 8, 8)])
def test_lying_npy_header_is_refused_before_allocating(workdir, shape):
    """10^13 declared elements (40 TB) would be a MemoryError; a header declaring more than
    the file holds would read past its end."""
    _npy_with_header(workdir / "liar.npy", shape, bytes(16))
    result = explain(workdir, "conv.onnx", "-i", str(workdir / "liar.npy"))
    one_error(result, "liar.npy", f"declares shape {shape}", "holds 16 bytes")


def test_unparsable_npy_header_is_one_line(workdir):
    """An unclosed brace makes numpy's header parser raise tokenize.TokenError."""
    text = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 8, 8), "
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    magic = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text))
    (workdir / "broken.npy").write_bytes(magic + text + bytes(768))
    result = explain(workdir, "conv.onnx", "-i", str(workdir / "broken.npy"))
    one_error(result, "cannot read input file", "broken.npy")


def test_lying_header_inside_npz_is_refused(workdir):
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        stream, {"descr": "<f4", "fortran_order": False, "shape": (10**13,)})
    with zipfile.ZipFile(workdir / "liar.npz", "w") as archive:
        archive.writestr("x.npy", stream.getvalue() + bytes(8))
    result = explain(workdir, "conv.onnx", "-i", str(workdir / "liar.npz"))
    one_error(result, "liar.npz", "member 'x'", "(10000000000000,)")


def _png(width: int, height: int, data: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("content, part", [
    (b"\x89PNG\r\n\x1a\n" + bytes(40), "cannot identify"),  # garbage after the magic
    (_png(8, 8, zlib.compress(bytes(10))), "cat.png"),  # pixel data cut short
    (_png(100_000, 100_000, zlib.compress(bytes(100))), "decompression bomb"),  # 10^10 pixels
], ids=["garbage", "truncated", "bomb"])
def test_corrupt_image_is_one_line(workdir, content, part):
    (workdir / "cat.png").write_bytes(content)
    before = digests(workdir)
    result = explain(workdir, "conv.onnx", "-i", str(workdir / "cat.png"), "-o",
                     str(workdir / "out"))
    one_error(result, "cannot read image", "cat.png", part)
    assert digests(workdir) == before and not (workdir / "out").exists()


def test_good_npz_still_loads(workdir):
    np.savez(workdir / "good.npz", x=np.load(workdir / "image.npy"))
    result = explain(workdir, "conv.onnx", "-i", str(workdir / "good.npz"), "-o",
                     str(workdir / "out"))
    assert result.exit_code == 0, result.stderr
    assert np.load(workdir / "out" / "attribution.npy").shape == (1, 3, 8, 8)


# ---- output locations and options -------------------------------------------------------

@pytest.mark.parametrize("command, out", [
    ("explain", "/proc/onnxplain-test/out"),
    ("report", "/proc/onnxplain-test/out"),
    ("export", "/proc/onnxplain-test/e.onnx"),
])
def test_unwritable_out_is_one_line(workdir, command, out):
    """/proc refuses new folders and files even to root (a chmod 0o555 folder would not)."""
    result = run(command, str(workdir / "conv.onnx"), *(("-i", str(workdir / "image.npy"))
                                                       if command != "export" else ()),
                 "-o", out, "-q")
    one_error(result, "/proc/onnxplain-test")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_is_one_line(workdir):
    folder = workdir / "locked"
    folder.mkdir(mode=0o555)
    result = explain(workdir, "conv.onnx", "-i", str(workdir / "image.npy"), "-o",
                     str(folder / "out"))
    one_error(result, "permission denied")


def test_out_under_a_file_is_one_line(workdir):
    result = explain(workdir, "conv.onnx", "-i", str(workdir / "image.npy"), "-o",
                     str(workdir / "image.npy" / "out"))
    one_error(result, "is not a folder")


def test_heatmaps_of_a_3000_character_input_name_fit_the_file_system(workdir):
    long_name = "pixels_" * 430  # 3,010 characters
    onnx.save(conv_model(long_name), workdir / "long.onnx")
    result = explain(workdir, "long.onnx", "-i", str(workdir / "image.npy"), "-o",
                     str(workdir / "out"))
    assert result.exit_code == 0, result.stderr
    names = sorted(os.listdir(workdir / "out"))
    heatmaps = [name for name in names if name.startswith("heatmap_")]
    assert len(heatmaps) == 1 and all(len(name.encode()) <= 255 for name in names)
    # Deterministic, and distinct from another long name with the same start.
    onnx.save(conv_model(long_name + "2"), workdir / "long2.onnx")
    again = explain(workdir, "long2.onnx", "-i", str(workdir / "image.npy"), "-o",
                    str(workdir / "out2"))
    assert again.exit_code == 0, again.stderr
    other = [n for n in os.listdir(workdir / "out2") if n.startswith("heatmap_")]
    assert other != heatmaps and heatmaps[0].startswith("heatmap_pixels_pixels_")
    report = run("report", str(workdir / "long.onnx"), "-i", str(workdir / "image.npy"), "-m",
                 "saliency", "--no-scores", "-o", str(workdir / "report"), "-q")
    assert report.exit_code == 0, report.stderr
    assert all(len(name.encode()) <= 255 for name in os.listdir(workdir / "report"))


@pytest.mark.parametrize("option, part", [
    ("noise_level=nan", "option 'noise_level' of method 'smoothgrad' must be a finite number"),
    ("noise_level=inf", "must be a finite number"),
    ("noise_level=-inf", "must be a finite number"),
    ("seed=-1", "option 'seed' of method 'smoothgrad' must be an integer from 0 to 4294967295"),
])
def test_out_of_range_option_is_refused(workdir, option, part):
    result = explain(workdir, "conv.onnx", "-i", str(workdir / "image.npy"), "-m",
                     "smoothgrad", "-O", option, "-o", str(workdir / "out"))
    one_error(result, part)
    assert not (workdir / "out").exists()


@pytest.mark.parametrize("option, part", [
    ("window=nan", "option 'window' of method 'occlusion' expects one or two positive"),
    ("stride=1e99", "option 'stride' of method 'occlusion' expects one or two positive"),
    ("max_runs=0", "option 'max_runs' of method 'occlusion' must be an integer >= 1"),
    ("baseline=inf", "option 'baseline'"),
])
def test_bad_occlusion_options_are_one_line(workdir, option, part):
    result = explain(workdir, "conv.onnx", "-i", str(workdir / "image.npy"), "-m",
                     "occlusion", "-O", option)
    one_error(result, part)


# ---- unbounded work ---------------------------------------------------------------------

def test_occlusion_beyond_its_budget_is_refused_before_running(workdir):
    """Window 1 over a [4, 8, 8, 64] row is 16,384 runs per row: refused with the fix."""
    onnx.save(volume_model((4, 8, 8, 64)), workdir / "volume.onnx")
    np.save(workdir / "v.npy", np.ones((1, 4, 8, 8, 64), np.float32))
    result = explain(workdir, "volume.onnx", "-i", str(workdir / "v.npy"), "-m", "occlusion",
                     "-o", str(workdir / "out"))
    one_error(result, "16,384 forward runs per row", "max_runs=10,000", "-O max_runs=16384")
    assert not (workdir / "out").exists()


def test_occlusion_says_how_many_runs_and_obeys_a_raised_budget(workdir):
    onnx.save(volume_model((2, 4, 4, 4)), workdir / "volume.onnx")
    np.save(workdir / "v.npy", np.ones((1, 2, 4, 4, 4), np.float32))
    refused = explain(workdir, "volume.onnx", "-i", str(workdir / "v.npy"), "-m",
                      "occlusion", "-O", "max_runs=100")
    one_error(refused, "128 forward runs per row", "-O max_runs=128")
    # Without -q the run count is said before the runs start (2,000 runs and more).
    onnx.save(volume_model((2, 8, 8, 16)), workdir / "big.onnx")
    np.save(workdir / "b.npy", np.ones((1, 2, 8, 8, 16), np.float32))
    ran = run("explain", str(workdir / "big.onnx"), "-i", str(workdir / "b.npy"), "-m",
              "occlusion", "-o", str(workdir / "out"))
    assert ran.exit_code == 0, ran.stderr
    assert "occlusion: 2,048 forward runs (1 input rows x 2,048 perturbed copies)" in ran.stderr
    # Every element's weight is 1 and the baseline 0: each window's drop is its value, 1.
    np.testing.assert_allclose(np.load(workdir / "out" / "attribution.npy"), 1.0)


# ---- nothing left behind ----------------------------------------------------------------

def test_failed_explain_leaves_no_out_folder(workdir):
    before = digests(workdir, recursive=True)
    result = explain(workdir, "fails.onnx", "-i", str(workdir / "x4.npy"), "-o",
                     str(workdir / "new" / "nested" / "out"))
    one_error(result, "ONNX Runtime failed to run the model", "Gather")
    assert not (workdir / "new").exists()
    assert digests(workdir, recursive=True) == before


def test_failed_explain_keeps_an_existing_out_folder_as_it_was(workdir):
    folder = workdir / "out"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    result = explain(workdir, "fails.onnx", "-i", str(workdir / "x4.npy"), "-o", str(folder))
    one_error(result)
    assert sorted(os.listdir(folder)) == ["notes.txt"]


def test_export_check_with_bad_inputs_writes_no_model(workdir):
    before = digests(workdir, recursive=True)
    result = run("export", str(workdir / "conv.onnx"), "-o", str(workdir / "new" / "e.onnx"),
                 "--check", "-i", str(workdir / "x4.npy"), "-q")
    one_error(result, "input 'x'")
    assert not (workdir / "new").exists()
    assert digests(workdir, recursive=True) == before


# ---- internal errors and stderr, in a real process --------------------------------------

def _cli(*args: str, env: dict | None = None, patch: str = "") -> subprocess.CompletedProcess:
    code = f"{patch}\nfrom onnxplain_cli.main import main\nmain()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


@pytest.mark.parametrize("model, message", [
    ("fails.onnx", "indices element out of data bounds"),  # fails while running
    ("rejected.onnx", "ONNX Runtime could not load the model"),  # fails at session creation
])
def test_onnx_runtime_failure_prints_exactly_one_line_and_no_log(workdir, model, message):
    done = _cli("explain", str(workdir / model), "-i", str(workdir / "x4.npy"), "-o",
                str(workdir / "out"), "-m", "occlusion")
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and message in lines[0]
    assert "\x1b[" not in done.stderr  # ORT's coloured log lines
    assert not (workdir / "out").exists()


BUG = ("import onnxplain.graph.model as m; "
       "m.Model.load = classmethod(lambda cls, *a, **k: 1 / 0)")


def test_internal_error_has_its_own_exit_code_and_a_reproduction_hint(workdir):
    from onnxplain._version import __version__

    done = _cli("inspect", str(workdir / "conv.onnx"), patch=BUG,
                env={"ONNXPLAIN_DEBUG": ""})
    assert done.returncode == 70, done.stderr
    lines = done.stderr.splitlines()
    assert lines == [
        "error: internal error: ZeroDivisionError: division by zero; this is a bug in "
        f"onnxplain {__version__}, not a problem with your input",
        f"to report it, rerun as: ONNXPLAIN_DEBUG=1 onnxplain inspect {workdir / 'conv.onnx'}"]
    debug = _cli("inspect", str(workdir / "conv.onnx"), patch=BUG, env={"ONNXPLAIN_DEBUG": "1"})
    assert debug.returncode == 70
    assert "Traceback (most recent call last)" in debug.stderr
    assert "ZeroDivisionError" in debug.stderr.splitlines()[-3]


def test_pickle_module_is_never_asked_to_load(workdir, monkeypatch):
    """Belt and braces for the planted-object tests: no input path reaches pickle.loads."""
    np.savez(workdir / "evil.npz", x=np.array([{"a": 1}], dtype=object))

    def refuse(*args, **kwargs):
        raise AssertionError("pickle.loads called")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    one_error(explain(workdir, "conv.onnx", "-i", str(workdir / "evil.npz")), "never unpickles")


# ---- found by the fuzzer's input, output and export families (tests/fuzz/surface.py) ----

def test_zip_bomb_npz_is_refused_before_reading(workdir):
    """An honest header over 2**30 float32 (4 GiB) deflated to 4 MB: capped by the memory
    budget from the archive's directory, before one byte is inflated."""
    from tests.fuzz.surface import _zip_bomb

    (workdir / "bomb.npz").write_bytes(_zip_bomb())
    result = explain(workdir, "conv.onnx", "-i", str(workdir / "bomb.npz"), "-o",
                     str(workdir / "out"))
    one_error(result, "bomb.npz expands to 4,294,967,424 bytes", "memory budget of 512 MB")
    assert not (workdir / "out").exists()


def test_small_compressed_npz_still_loads(workdir):
    np.savez_compressed(workdir / "small.npz", x=np.ones((1, 3, 8, 8), np.float32))
    result = explain(workdir, "conv.onnx", "-i", str(workdir / "small.npz"), "-o",
                     str(workdir / "out"))
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize("command", ["explain", "export"])
def test_overlong_out_name_is_one_line(workdir, command):
    """A 300-byte file name (the limit is 255): the user's argument, exit 2, not a bug."""
    out = workdir / ("o" * 300 + (".onnx" if command == "export" else ""))
    args = ("-i", str(workdir / "image.npy")) if command == "explain" else ()
    result = run(command, str(workdir / "conv.onnx"), *args, "-o", str(out), "-q")
    one_error(result, "File name too long")


def conv_group_model() -> onnx.ModelProto:
    """The issue's case: a Conv whose group (2) does not divide its 3 input channels."""
    model = conv_model()
    model.graph.node[0].attribute.append(helper.make_attribute("group", 2))
    return model


def test_export_shape_inference_failure_is_one_line_naming_the_node(workdir):
    onnx.save(conv_group_model(), workdir / "group.onnx")
    before = digests(workdir, recursive=True)
    result = run("export", str(workdir / "group.onnx"), "-o", str(workdir / "e.onnx"), "-q")
    one_error(result, "has group=2, which does not divide the 3 channels", "node '")  # at load
    assert digests(workdir, recursive=True) == before
    checked = run("export", str(workdir / "group.onnx"), "-o", str(workdir / "e.onnx"),
                  "--check", "-i", str(workdir / "image.npy"), "-q")
    assert checked.exit_code == 2 and "Traceback" not in checked.stderr, checked.stderr
    assert digests(workdir, recursive=True) == before


@pytest.mark.parametrize("shape, tokens", [((1, 3, -8, 8), 4), ((1, 3, 8, -8), 4),
                                           ((1, 3, 0, 8), 4), ((1, 3, 8, 8), -4)])
def test_patch_grid_over_a_size_no_image_has_is_none(shape, tokens):
    """inspect reads the grid off declared sizes: a negative one has no grid (isqrt raised)."""
    from onnxplain.graph.attention import patch_grid

    assert patch_grid(shape, "NCHW", tokens) == (0, None)
    assert patch_grid((1, 8, 8, 3), "NHWC", 5) == (1, (2, 2))  # the search itself still works


# Real declarations: a float > 0, an int >= 1 and a bool.
EPSILON, N_STEPS, ABS = ("lrp", "epsilon"), ("integrated_gradients", "n_steps"), ("saliency", "abs")


def _check(declared: tuple[str, str], value):
    from onnxplain.methods import get_method

    method, key = declared
    return get_method(method).option(key).check(method, value)


@pytest.mark.parametrize(("value", "declared", "message"), [
    ((), EPSILON, "expects a float > 0, got a value of type tuple"),
    (np.zeros(10**6), N_STEPS, "expects an int >= 1 or one of auto, got a value of type ndarray"),
    (3.5, N_STEPS, "expects an int >= 1 or one of auto, got 3.5"),
    (True, N_STEPS, "expects an int >= 1 or one of auto, got True"),
    (2, ABS, "expects a bool, got 2"),
])
def test_api_option_of_the_wrong_kind_is_one_line(value, declared, message):
    with pytest.raises(InputError, match=message) as error:
        _check(declared, value)
    assert "\n" not in str(error.value) and len(str(error.value)) < 200


@pytest.mark.parametrize(("value", "declared", "want"), [
    (32.0, N_STEPS, 32), (np.int64(5), N_STEPS, 5), (1, EPSILON, 1.0),
    (np.float32(0.5), EPSILON, 0.5), (1, ABS, True), ("7", N_STEPS, 7)])
def test_api_option_numbers_keep_working(value, declared, want):
    got = _check(declared, value)
    assert got == want and type(got) is type(want)
