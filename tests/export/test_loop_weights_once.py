"""The perturbation methods' programs store the model's weights once (export.perturb: the
clean rows run in the Loop's iteration 0, so the model's nodes are the body's only): an
exported occlusion, RISE, Kernel SHAP or LIME explainer of resnet18_64 is the size of the
saliency one plus the method's own constants, each weight is stored in one graph, and the
program still gives what Explainer.explain gives, bit for bit, a batch what its rows give
one by one, and its original outputs are the model's."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from onnxplain import Explainer
from onnxplain.export.loop import BODY_PREFIX
from onnxplain.exporter import export_explainer
from onnxplain.graph.weights import nested_graphs
from onnxplain.runtime.session import Session

from .test_export import _run

MODEL = "resnet18_64"
OPTIONS = {"occlusion": {"window": 16, "stride": 16},
           "rise": {"n_masks": 16, "seed": 0},
           "kernel_shap": {"n_samples": 40, "seed": 0},
           "lime": {"n_samples": 40, "seed": 0}}


def _stored(program: onnx.ModelProto) -> dict[str, list[int]]:
    """Bytes of each initializer of every graph (Loop bodies' names without their prefix)."""
    found: dict[str, list[int]] = {}
    for graph in nested_graphs(program.graph):
        for init in graph.initializer:
            name = init.name.removeprefix(BODY_PREFIX + "/")
            found.setdefault(name, []).append(init.ByteSize())
    return found


@pytest.fixture(scope="module")
def saliency_bytes(zoo, tmp_path_factory) -> int:
    path = tmp_path_factory.mktemp("saliency") / "explainer.onnx"
    onnx.save(export_explainer(str(zoo.model_path(MODEL)), "saliency"), path)
    return os.path.getsize(path)


@pytest.mark.parametrize("method", list(OPTIONS))
def test_the_file_is_saliencys_plus_the_methods_constants(zoo, tmp_path, saliency_bytes,
                                                          method):
    original = str(zoo.model_path(MODEL))
    weights = {init.name for init in onnx.load(original).graph.initializer}
    program = export_explainer(original, method, **OPTIONS[method])
    stored = _stored(program)
    twice = [name for name in weights if len(stored.get(name, [])) > 1]
    assert not twice, twice[:5]
    assert all(name in stored for name in weights)  # none lost either
    own = sum(sum(sizes) for name, sizes in stored.items() if name not in weights)
    onnx.save(program, tmp_path / "explainer.onnx")
    size = os.path.getsize(tmp_path / "explainer.onnx")
    assert size <= 1.05 * saliency_bytes + own, (size, saliency_bytes, own)


@pytest.mark.parametrize("method", ["occlusion", "rise"])
def test_the_program_is_in_process_and_a_batch_its_rows(zoo, method):
    explainer = Explainer(str(zoo.model_path(MODEL)), "cpu", progress=False)
    x = zoo.sample(MODEL)["pixel_values"][:2]
    target = np.array([3, 5], np.int64)
    expected = explainer.explain(x, method, target=target, **OPTIONS[method])
    got = _run(export_explainer(explainer.model, method, **OPTIONS[method]),
               {"pixel_values": x, "target": target})
    np.testing.assert_array_equal(got["attribution/pixel_values"], expected["pixel_values"])
    plain = Session(explainer.model.proto, ["CPUExecutionProvider"],
                    weights=explainer.model.weights).run(None, {"pixel_values": x})
    np.testing.assert_allclose(got["logits"], plain["logits"], rtol=1e-6, atol=1e-7)
    scale = float(np.abs(expected["pixel_values"]).max())
    assert scale > 0  # an oracle that can fail
    for row in range(2):
        alone = explainer.explain(x[row:row + 1], method, target=target[row:row + 1],
                                  **OPTIONS[method])["pixel_values"]
        np.testing.assert_allclose(alone[0], expected["pixel_values"][row], rtol=1e-5,
                                   atol=1e-5 * scale)


def test_a_large_models_weights_stay_in_the_outer_graph_once(zoo, monkeypatch):
    """Past OUTER_WEIGHTS_FROM the body reads the weights from the outer graph (in process
    from the user's file): stored once there, none in the body, and the program is still
    the in-process one bit for bit."""
    import onnxplain.export.loop as loop

    monkeypatch.setattr(loop, "OUTER_WEIGHTS_FROM", 0)
    explainer = Explainer(str(zoo.model_path(MODEL)), "cpu", progress=False)
    x = zoo.sample(MODEL)["pixel_values"][:2]
    expected = explainer.explain(x, "occlusion", target=3, **OPTIONS["occlusion"])
    program = export_explainer(explainer.model, "occlusion", **OPTIONS["occlusion"])
    (body,) = [a.g for n in program.graph.node if n.op_type == "Loop" for a in n.attribute]
    assert not [init.name for init in body.initializer if np.prod(init.dims) > 64]
    weights = {init.name for init in explainer.model.proto.graph.initializer}
    assert all(len(_stored(program).get(name, [])) == 1 for name in weights)
    got = _run(program, {"pixel_values": x, "target": np.array([3, 3], np.int64)})
    np.testing.assert_array_equal(got["attribution/pixel_values"], expected["pixel_values"])
