"""An exported explainer is standalone: a fresh Python process with onnxruntime and numpy but
no onnxplain runs it with a plain InferenceSession and gets the in-process attributions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxplain
from onnxplain.export import ATTRIBUTION, TARGET, TARGET_USED
from onnxplain.exporter import export_explainer
from onnxplain.methods.integrated_gradients import ConvergenceWarning

ROOT = Path(__file__).resolve().parents[2]
RTOL = 1e-5
# What this test exports: method -> export options (the in-process method takes the same).
METHODS = {"saliency": {}, "integrated_gradients": {"n_steps": 16}, "grad_cam": {}}
EXTRA = {"integrated_gradients": {"score", "baseline_score", "convergence_delta"},
         "grad_cam": {"layer_map"}}
STANDARD_DOMAINS = ("", "ai.onnx")

# Runs in a fresh interpreter (-I: no PYTHONPATH, no user site, no script or working
# folder on sys.path): argv = repo root, model, then (inputs.npz, outputs.npz) pairs.
CHILD = textwrap.dedent("""
    import os
    import sys

    sys.modules["onnxplain"] = None  # the project is installed editable: block it outright
    root = os.path.realpath(sys.argv[1])
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != root]
    try:
        import onnxplain  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("onnxplain is importable in the child")

    import json

    import numpy as np
    import onnxruntime as ort

    model, pairs = sys.argv[2], sys.argv[3:]
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for source, destination in zip(pairs[::2], pairs[1::2]):
        with np.load(source) as loaded:
            feeds = dict(loaded)
        np.savez(destination, **dict(zip(names, session.run(None, feeds))))

    # Nothing from the repository (outside its virtual environment) was loaded.
    prefix = os.path.realpath(sys.prefix) + os.sep
    leaked = sorted(name for name, module in sys.modules.items()
                    if getattr(module, "__file__", None)
                    and os.path.realpath(module.__file__).startswith(root + os.sep)
                    and not os.path.realpath(module.__file__).startswith(prefix))
    if leaked:
        raise SystemExit(f"modules loaded from the repository: {leaked}")
    print(json.dumps({"sys_path": sys.path, "onnxruntime": ort.__version__,
                      "onnxplain_blocked": sys.modules.get("onnxplain", "absent") is None}))
""")


# ---- helpers shared with test_node_client.py ------------------------------------------------

def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    """Largest absolute difference over the largest absolute reference value."""
    got = np.asarray(got, np.float64)
    expected = np.asarray(expected, np.float64)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    diff = float(np.abs(got - expected).max(initial=0.0))
    scale = float(np.abs(expected).max(initial=0.0))
    return diff / scale if scale else diff


def iter_nodes(graph: onnx.GraphProto):
    """Every node of `graph`, its subgraphs' nodes included."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from iter_nodes(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for sub in attribute.graphs:
                    yield from iter_nodes(sub)


def assert_standard(model: onnx.ModelProto, custom_allowed: bool = False) -> None:
    """Valid for the ONNX checker, with only standard operators (or onnxplain's model-local
    functions, where `custom_allowed`)."""
    onnx.checker.check_model(model, full_check=True)
    nodes = list(iter_nodes(model.graph))
    for function in model.functions:
        assert function.domain == "onnxplain", function.domain
        nodes += list(function.node)
    domains = {node.domain for node in nodes}
    assert domains <= {*STANDARD_DOMAINS, "onnxplain"}, domains
    if not custom_allowed:
        assert domains <= set(STANDARD_DOMAINS), domains
        assert not model.functions, [f.name for f in model.functions]
        assert {o.domain for o in model.opset_import} <= set(STANDARD_DOMAINS)


def digits_case(path: Path) -> dict:
    """The zoo sample digits, their predicted classes, other requested classes, and the
    original model's outputs from a plain ONNX Runtime session."""
    explainer = onnxplain.Explainer(path, providers="cpu", progress=False)
    with np.load(path.parent / "sample.npz") as sample:
        feeds = dict(sample)
    assert [spec.name for spec in explainer.model.inputs] == list(feeds)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    original = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds),
                        strict=True))
    logits = original[explainer.output]
    predicted = logits.argmax(axis=1).astype(np.int64)
    requested = ((predicted + 1 + np.arange(len(predicted))) % logits.shape[1]).astype(np.int64)
    return {"path": path, "explainer": explainer, "feeds": feeds, "original": original,
            "predicted": predicted, "requested": requested}


def assert_matches_method(outputs: dict, case: dict, method: str, options: dict,
                          target: np.ndarray | None, exact: bool = True) -> None:
    """The exported model's outputs against Explainer.explain and the original model
    (bit for bit where `exact`, as with the ONNX Runtime build that made the reference)."""
    explainer = case["explainer"]
    expected_target = case["predicted"] if target is None else target
    np.testing.assert_array_equal(outputs[TARGET_USED], expected_target)
    for name, value in case["original"].items():
        if exact:  # the clean copy runs the original nodes on the same rows
            np.testing.assert_array_equal(outputs[name], value, err_msg=name)
        else:
            error = relative_error(outputs[name], value)
            assert error < RTOL, f"original output '{name}': relative error {error:.3g}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 16 steps are few, on purpose
        reference = explainer.explain(case["feeds"], method=method, target=target, **options)
    np.testing.assert_array_equal(reference.target, expected_target)
    compared = 0
    for name, expected in reference.attributions.items():
        if ATTRIBUTION + name in outputs:
            error = relative_error(outputs[ATTRIBUTION + name], expected)
            assert error < RTOL, f"{method} {ATTRIBUTION + name}: relative error {error:.3g}"
            compared += 1
    assert compared, f"no attribution output among {sorted(outputs)}"
    if method == "integrated_gradients":
        scale = float(np.abs(case["original"][explainer.output]).max())
        delta = outputs["convergence_delta"]
        assert float(np.abs(delta - reference.extras["convergence_delta"]).max()) < RTOL * scale
    if method == "grad_cam":
        at_layer = explainer.explain(case["feeds"], method=method, target=target,
                                     **{**options, "upsample": "none"})
        error = relative_error(outputs["layer_map"], next(iter(at_layer.attributions.values())))
        assert error < RTOL, f"layer_map: relative error {error:.3g}"


def expected_outputs(case: dict, method: str) -> set[str]:
    return ({*case["original"], TARGET_USED, "attribution/image"}
            | EXTRA.get(method, set()))


# ---- the test ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits(digits_path):
    return digits_case(Path(digits_path))


def run_without_onnxplain(model_file: Path, pairs: list[tuple[Path, Path]], tmp: Path) -> dict:
    script = tmp / "child.py"
    script.write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    args = [sys.executable, "-I", str(script), str(ROOT), str(model_file)]
    args += [str(p) for pair in pairs for p in pair]
    done = subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["onnxplain_blocked"], "the child imported onnxplain"
    assert all(os.path.realpath(p or os.curdir) != str(ROOT) for p in report["sys_path"])
    return report


@pytest.mark.parametrize("method", METHODS)
def test_exported_explainer_runs_without_onnxplain(method, digits, tmp_path):
    options = METHODS[method]
    exported = export_explainer(digits["path"], method, **options)
    assert_standard(exported)
    assert [i.name for i in exported.graph.input][-1] == TARGET
    model_file = tmp_path / f"{method}.onnx"
    onnx.save(exported, model_file)

    targets = {"predicted": None, "requested": digits["requested"]}
    pairs = []
    for case, target in targets.items():
        feeds = dict(digits["feeds"], **({} if target is None else {TARGET: target}))
        np.savez(tmp_path / f"{case}_in.npz", **feeds)
        pairs.append((tmp_path / f"{case}_in.npz", tmp_path / f"{case}_out.npz"))
    run_without_onnxplain(model_file, pairs, tmp_path)

    for (case, target), (_, produced) in zip(targets.items(), pairs, strict=True):
        with np.load(produced) as loaded:
            outputs = dict(loaded)
        assert set(outputs) == expected_outputs(digits, method), case
        assert_matches_method(outputs, digits, method, options, target)



def test_a_local_head_with_its_prototypes_runs_without_onnxplain(digits, tmp_path):
    """EpsilonSoftmax ships as a model-local function: plain ONNX Runtime inlines it."""
    from model_zoo.digits import digits_data
    from onnxplain.local.head import fit_local_head
    from onnxplain.local.report import explain_prototypes

    x, y, _, _ = digits_data()
    head = fit_local_head(str(digits["path"]), "/features/features.6/Relu_output_0", x, y,
                          per_class=5, progress=False)
    exported = export_explainer(head.model, "prototypes")
    assert_standard(exported, custom_allowed=True)
    assert [f.name for f in exported.functions] == ["EpsilonSoftmax"]
    model_file = tmp_path / "prototypes.onnx"
    onnx.save(exported, model_file)
    np.savez(tmp_path / "in.npz", **digits["feeds"])
    run_without_onnxplain(model_file, [(tmp_path / "in.npz", tmp_path / "out.npz")], tmp_path)
    with np.load(tmp_path / "out.npz") as loaded:
        outputs = dict(loaded)
    rows = explain_prototypes(head.model, digits["feeds"])
    for row, sources, rejected in zip(rows, outputs["local/prototype_sources"],
                                      outputs["local/rejected"], strict=True):
        assert [p["source_row"] for p in row["prototypes"]] == sources.tolist()
        assert row["rejected"] == bool(rejected)
    expected = onnx_run(head.model, digits["feeds"])["local/probabilities"]
    assert relative_error(outputs["local/probabilities"], expected) < RTOL


def onnx_run(model: onnx.ModelProto, feeds: dict) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))
