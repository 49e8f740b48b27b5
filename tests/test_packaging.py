"""Packaging promises: one clear error without ONNX Runtime, no torch in the library, every
package listed, the CLI installed under its own import name."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCK_ORT = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ImportError("No module named 'onnxruntime'")
sys.meta_path.insert(0, Block())
"""


def test_import_without_onnxruntime_names_both_extras():
    code = BLOCK_ORT + "import onnxplain\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("onnxplain.errors.RuntimeMissingError: onnxplain needs ONNX Runtime")
    assert "onnxplain[gpu]" in last and "onnxplain[cpu]" in last and "never both" in last


def test_library_and_cli_never_import_torch():
    for folder in ("onnxplain", "cli"):
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                for name in names:
                    assert name.split(".")[0] not in {"torch", "captum", "transformers",
                                                       "sklearn"}, f"{path} imports {name}"


def test_explaining_works_with_torch_unimportable(tmp_path):
    code = BLOCK_ORT.replace('"onnxruntime"', '"torch"').replace(
        'name.startswith("onnxruntime.")', 'name.startswith("torch.")') + f"""
import numpy as np, onnx, onnxplain
sys.path.insert(0, {str(ROOT / 'tests')!r})
from tiny_models import mlp
result = onnxplain.Explainer(mlp(), providers="cpu").explain(np.ones((2, 6), np.float32))
assert result["x"].shape == (2, 6)
assert "torch" not in sys.modules
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr


def test_explaining_does_not_import_torch_even_when_installed():
    """ONNX Runtime's tools package imports torch when it can (onnxplain loads the one
    module it needs from its file instead)."""
    code = f"""
import sys
import numpy as np, onnxplain
sys.path.insert(0, {str(ROOT / 'tests')!r})
from tiny_models import mlp
onnxplain.Explainer(mlp(), providers="cpu").explain(np.ones((2, 6), np.float32))
print("torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr


def test_every_package_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "onnxplain").rglob("__init__.py")}
    assert found <= listed, f"add to pyproject.toml: {sorted(found - listed)}"
    assert config["package-dir"] == {"onnxplain_cli": "cli"}
    assert "cli" not in listed


def test_cli_is_installed_as_onnxplain_cli_not_cli():
    import onnxplain_cli

    assert Path(onnxplain_cli.__file__).resolve().parent == ROOT / "cli"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"onnxplain": "onnxplain_cli.main:main"}


def test_shape_inference_leaves_the_current_folder_alone(tmp_path, monkeypatch):
    """ONNX Runtime's symbolic shape inference saves a model (and uuid-named .data files)
    into the current folder when an op it does not know leaves shapes unknown."""
    import onnx

    from onnxplain.graph.shapes import infer_shapes

    h = onnx.helper
    graph = h.make_graph(
        [h.make_node("Mystery", ["x"], ["y"], domain="com.example"),
         h.make_node("Relu", ["y"], ["z"])], "g",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3])],
        [h.make_tensor_value_info("z", onnx.TensorProto.FLOAT, None)])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17),
                                               h.make_opsetid("com.example", 1)])
    monkeypatch.chdir(tmp_path)
    infos = infer_shapes(model)
    assert infos["x"].shape == ("N", 3)
    assert list(tmp_path.iterdir()) == []
