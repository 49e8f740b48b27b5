"""The command line: successful runs write what they promise; every bad input is one line
on stderr and exit code 2, never a traceback, and the user's files are left alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxplain_cli.main import main

from .cli_helpers import digests, run
from .tiny_models import mlp, mlp_reference, with_unsupported_ops


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    onnx.save(mlp(), tmp_path / "mlp.onnx")
    onnx.save(with_unsupported_ops(), tmp_path / "unsupported.onnx")
    x = np.random.default_rng(3).standard_normal((3, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    return tmp_path




def test_explain_writes_attribution_heatmapless_summary(workdir):
    model = mlp()
    before = digests(workdir)
    result = run("explain", str(workdir / "mlp.onnx"), "--input", str(workdir / "x.npy"),
                 "--method", "saliency", "--target", "3", "--out", str(workdir / "out"))
    assert result.exit_code == 0, result.stderr
    out = workdir / "out"
    attribution = np.load(out / "attribution.npy")
    _, jacobian = mlp_reference(model, np.load(workdir / "x.npy"))
    np.testing.assert_allclose(attribution, np.abs(jacobian[:, 3]), rtol=1e-5, atol=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "saliency"
    assert summary["target"] == [3, 3, 3]
    assert len(summary["predicted_class"]) == 3
    import onnxruntime

    # What the session really got: CPU here, CUDA on a machine where it works.
    assert summary["execution_provider"] in onnxruntime.get_available_providers()
    assert summary["execution_providers"][-1] == "CPUExecutionProvider"
    assert summary["runtime_s"] > 0
    assert summary["inputs"]["x"]["shape"] == [3, 6]
    assert set(summary["inputs"]["x"]["statistics"]) >= {"min", "max", "mean", "sum"}
    assert not list(out.glob("heatmap_*.png"))  # not image-shaped
    assert digests(workdir) == before  # model and input untouched


def test_explain_default_target_is_predicted_and_json_output(workdir):
    result = run("explain", str(workdir / "mlp.onnx"), "-i", f"x={workdir / 'x.npy'}",
                 "--out", str(workdir / "out"), "--json", "-O", "abs=false")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["target"] == summary["predicted_class"]
    assert summary["options"] == {"abs": False}
    logits, jacobian = mlp_reference(mlp(), np.load(workdir / "x.npy"))
    signed = np.load(workdir / "out" / "attribution.npy")
    rows = np.arange(3)
    np.testing.assert_allclose(signed, jacobian[rows, logits.argmax(1)], rtol=1e-5, atol=1e-6)


def test_image_inputs_get_heatmaps(tmp_path, digits_path):
    x = np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "digits.npy", x)
    result = run("explain", str(digits_path), "-i", str(tmp_path / "digits.npy"),
                 "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.stderr
    from PIL import Image

    for row in range(2):
        image = Image.open(tmp_path / "out" / f"heatmap_image_{row}.png")
        assert image.size[0] >= 224 and image.mode == "RGB"


def test_methods_and_version():
    listing = run("methods")
    assert listing.exit_code == 0 and "saliency" in listing.stdout
    assert "abs=True" in listing.stdout
    rows = {row["name"]: row for row in json.loads(run("methods", "--json").stdout)}
    from onnxplain import METHODS

    assert set(rows) == set(METHODS)
    assert rows["saliency"]["defaults"] == {"abs": True}
    assert rows["integrated_gradients"]["defaults"]["n_steps"] == 50
    assert all(row["reference"] and row["summary"] for row in rows.values())
    from onnxplain import __version__

    assert __version__ in run("--version").stdout


def test_inspect_lists_missing_rules_with_node_names(workdir):
    result = run("inspect", str(workdir / "unsupported.onnx"), "--json")
    assert result.exit_code == 0, result.stderr
    description = json.loads(result.stdout)
    missing = {(m["op_type"], m["node"]) for m in description["ops_without_backward_rule"]}
    assert missing == {("Det", "det_a"), ("Det", "det_b"), ("Acosh", "acosh")}
    assert description["batch_axis"]["symbolic"] is True
    assert description["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 6]}]
    assert description["op_histogram"]["Det"] == 2
    text = run("inspect", str(workdir / "unsupported.onnx"))
    assert "det_a" in text.stdout and "on the explained path" in text.stdout


def _assert_one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert fragment in lines[0], lines[0]


BAD_INPUTS = {
    "missing model": (["explain", "{w}/nope.onnx", "-i", "{w}/x.npy"], "model file not found"),
    "not onnx": (["explain", "{w}/x.npy", "-i", "{w}/x.npy"], "not an ONNX model"),
    "truncated": (["explain", "{w}/truncated.onnx", "-i", "{w}/x.npy"], "ONNX model"),
    "missing input file": (["explain", "{w}/mlp.onnx", "-i", "{w}/none.npy"],
                           "input file not found"),
    "bad input file": (["explain", "{w}/mlp.onnx", "-i", "{w}/garbage.npy"],
                       "cannot read input file"),
    "unknown input name": (["explain", "{w}/mlp.onnx", "-i", "y={w}/x.npy"],
                           "unknown input 'y'; the model's inputs are: x (float32 [batch, 6])"),
    "wrong rank": (["explain", "{w}/mlp.onnx", "-i", "{w}/rank1.npy"], "expects rank 2"),
    "wrong shape": (["explain", "{w}/mlp.onnx", "-i", "{w}/wide.npy"],
                    "expects size 6 on axis 1"),
    "wrong dtype": (["explain", "{w}/mlp.onnx", "-i", "{w}/bytes.npy"],
                    "expects float32, got uint8"),
    "target out of range": (["explain", "{w}/mlp.onnx", "-i", "{w}/x.npy", "-t", "4"],
                            "target 4 is out of range: the output has 4 classes"),
    "negative target": (["explain", "{w}/mlp.onnx", "-i", "{w}/x.npy", "-t", "-1"],
                        "out of range"),
    "target count": (["explain", "{w}/mlp.onnx", "-i", "{w}/x.npy", "-t", "1,2"],
                     "target has 2 entries for 3 input rows"),
    "target text": (["explain", "{w}/mlp.onnx", "-i", "{w}/x.npy", "-t", "cat"],
                    "not a class index"),
    "unsupported ops": (["explain", "{w}/unsupported.onnx", "-i", "{w}/x.npy"],
                        "3 nodes have no backward rule: ai.onnx::Det (opset 17) at 2 nodes "
                        "'det_a', 'det_b'; ai.onnx::Acosh (opset 17) at node 'acosh'"),
    "unknown method": (["explain", "{w}/mlp.onnx", "-i", "{w}/x.npy", "-m", "magic"],
                       "unknown method 'magic'"),
    "unknown option": (["explain", "{w}/mlp.onnx", "-i", "{w}/x.npy", "-O", "steps=3"],
                       "has no option 'steps'"),
    "bad option value": (["explain", "{w}/mlp.onnx", "-i", "{w}/x.npy", "-O", "abs=maybe"],
                         "expects a bool"),
    "unknown output": (["explain", "{w}/mlp.onnx", "-i", "{w}/x.npy", "--output", "z"],
                       "unknown output 'z'"),
    "out is a file": (["explain", "{w}/mlp.onnx", "-i", "{w}/x.npy", "-o", "{w}/x.npy"],
                      "exists and is not a folder"),
    "inspect garbage": (["inspect", "{w}/garbage.npy"], "not an ONNX model"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_code_2(workdir, case):
    (workdir / "truncated.onnx").write_bytes((workdir / "mlp.onnx").read_bytes()[:120])
    (workdir / "garbage.npy").write_bytes(b"not numpy")
    np.save(workdir / "rank1.npy", np.zeros(6, dtype=np.float32))
    np.save(workdir / "wide.npy", np.zeros((3, 7), dtype=np.float32))
    np.save(workdir / "bytes.npy", np.zeros((3, 6), dtype=np.uint8))
    before = digests(workdir)
    args, fragment = BAD_INPUTS[case]
    result = run(*[a.format(w=workdir) for a in args], "-o", str(workdir / "out")) \
        if "-o" not in args and args[0] == "explain" else run(*[a.format(w=workdir) for a in args])
    _assert_one_line_error(result, fragment)
    assert digests(workdir) == before


def test_nan_input_warns_in_one_line_and_still_explains(workdir):
    x = np.load(workdir / "x.npy")
    x[0, 2] = np.nan
    np.save(workdir / "nan.npy", x)
    result = run("explain", str(workdir / "mlp.onnx"), "-i", str(workdir / "nan.npy"),
                 "-o", str(workdir / "out"))
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert warnings[0] == ("warning: input 'x' contains 1 NaN or Inf values; attributions "
                           "will not be meaningful")
    # The NaN row's gradient is 0 through the ReLU masks: said, never shown as a result.
    assert warnings[1:] == ["warning: every attribution is 0 in row 0: the explained score "
                            "does not change with the input where this method looks (a "
                            "constant output, a saturated activation, an input equal to the "
                            "baseline, or an op whose gradient is 0 almost everywhere on the "
                            "path)"]


def test_console_script_runs_in_a_real_process(workdir):
    """The installed `onnxplain` entry point, as a user runs it."""
    script = Path(sys.executable).with_name("onnxplain")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "onnxplain_cli.main"]
    ok = subprocess.run([*command, "explain", str(workdir / "mlp.onnx"), "-i",
                         str(workdir / "x.npy"), "-o", str(workdir / "out"), "-q"],
                        capture_output=True, text=True, env={**os.environ, "CI": ""})
    assert ok.returncode == 0 and ok.stdout == "" and ok.stderr == "", ok.stderr
    bad = subprocess.run([*command, "explain", str(workdir / "missing.onnx"), "-i", "x.npy"],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"error: model file not found: {workdir / 'missing.onnx'}"]


@pytest.mark.parametrize("method, options", [
    ("input_x_gradient", []),
    ("integrated_gradients", ["-O", "n_steps=8", "-O", "rule=riemann_middle",
                              "-O", "baseline=@{w}/base.npy"]),
    ("smoothgrad", ["-O", "n_samples=3", "-O", "noise_level=0.1", "-O", "seed=7"]),
    ("vargrad", ["-O", "n_samples=3", "-O", "base=input_x_gradient"]),
    ("guided_backprop", []),
    ("deconvnet", []),
    ("grad_cam", ["-O", "upsample=nearest"]),
    ("guided_grad_cam", []),
    ("grad_cam_plus_plus", []),
    ("cam", []),
    ("activation_maps", []),
    ("occlusion", ["-O", "window=2", "-O", "stride=1", "-O", "baseline=0.5"]),
])
def test_every_method_runs_from_the_cli(tmp_path, digits_path, method, options):
    x = np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "digits.npy", x)
    np.save(tmp_path / "base.npy", np.full((1, 1, 8, 8), 0.1, np.float32))
    result = run("explain", str(digits_path), "-i", str(tmp_path / "digits.npy"),
                 "-m", method, "-o", str(tmp_path / "out"), "--json",
                 *[o.format(w=tmp_path) for o in options])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["method"] == method
    assert np.load(tmp_path / "out" / "attribution.npy").shape[0] == 2
    assert list((tmp_path / "out").glob("heatmap_image_*.png"))
    if method == "integrated_gradients":
        assert summary["options"]["rule"] == "riemann_middle"
        assert len(summary["extras"]["convergence_delta"]) == 2


def test_every_command_takes_quiet_and_json():
    """The issue's promise for the command line: -q and --json on every command."""
    import click

    def commands(group, prefix=()):
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                yield from commands(command, (*prefix, name))
            else:
                yield (*prefix, name), command

    for path, command in commands(main):
        flags = {opt for param in command.params for opt in getattr(param, "opts", [])}
        assert {"-q", "--json"} <= flags, f"onnxplain {' '.join(path)} lacks -q or --json"


def test_inspect_names_the_affine_stem(tmp_path):
    """The MLP's input meets a Gemm first: IG walks its path after it, at 'h'."""
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp(), str(path))
    description = json.loads(run("inspect", str(path), "--json").stdout)
    assert description["affine_stems"] == {"x": {"ops": ["Gemm"], "end": "h"}}
    text = run("inspect", str(path)).stdout
    assert "affine stem of x: Gemm, ending at 'h'" in text
