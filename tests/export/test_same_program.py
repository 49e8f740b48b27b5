"""One graph per method (issue 19, item 1): saliency, input x gradient, guided backprop and
deconvnet run in-process the very program `export` saves, so the exported model's
attributions equal Explainer.explain's bit for bit, whatever the objective (class, output
seed, a pixel of a map); its original outputs are the model's own; a batch explains as its
rows one by one. Token-id models (attribution at the embedding, which export refuses) run
the same builder in-process."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxplain import Explainer
from onnxplain.errors import InputError, ModelError
from onnxplain.export import emit_explainer, export_explainer
from onnxplain.graph.weights import standalone
from onnxplain.methods import get_method
from onnxplain.methods._graph import graph_run
from onnxplain.runtime.session import Session

from .test_export import _run

METHODS = ["saliency", "input_x_gradient", "guided_backprop", "deconvnet"]
FLOAT_MODELS = ["digits_cnn", "rgb_cnn", "gru_features_tiny"]
TOKEN_MODELS = ["bert_small", "lstm_tokens_tiny"]


def _rows(zoo, name: str, count: int = 3) -> dict[str, np.ndarray]:
    return {k: v[:count] for k, v in zoo.sample(name).items()}


@pytest.fixture(scope="module")
def explainers(zoo):
    return {name: Explainer(str(zoo.model_path(name)), "cpu", progress=False)
            for name in FLOAT_MODELS + TOKEN_MODELS}


@pytest.mark.parametrize("name", FLOAT_MODELS)
@pytest.mark.parametrize("method", METHODS)
def test_exported_equals_in_process_bit_for_bit(zoo, explainers, name, method):
    explainer = explainers[name]
    feeds = _rows(zoo, name)
    exported = export_explainer(explainer.model, method)
    got = _run(exported, feeds)
    expected = explainer.explain(feeds, method=method)
    for source in explainer.sources:
        np.testing.assert_array_equal(got["attribution/" + source.input],
                                      expected.attributions[source.input])
    np.testing.assert_array_equal(got["target_used"], expected.target)
    # The original outputs are the model's own (the same ONNX Runtime kernels on them).
    plain = Session(explainer.model.proto, ["CPUExecutionProvider"],
                    weights=explainer.model.weights).run(None, feeds)
    for output, value in plain.items():
        np.testing.assert_allclose(got[output], value, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("method", METHODS)
def test_seeds_and_places_are_the_same_program(zoo, explainers, method):
    """An output seed (baked row, fed per row in-process) and a pixel of a map: bit for
    bit too."""
    explainer, feeds = explainers["rgb_cnn"], _rows(zoo, "rgb_cnn")
    row = np.random.default_rng(1).standard_normal(10).astype(np.float32)
    got = _run(export_explainer(explainer.model, method, output_seed=row), feeds)
    seeds = np.repeat(row[None], len(feeds["image"]), axis=0)
    expected = explainer.explain(feeds, method=method, output_seed=seeds)
    np.testing.assert_array_equal(got["attribution/image"], expected["image"])
    segmenter = Explainer(str(zoo.model_path("segment_fcn_tiny")), "cpu", progress=False)
    feeds = _rows(zoo, "segment_fcn_tiny", 2)
    got = _run(export_explainer(segmenter.model, method, pixel=(3, 5)), feeds)
    expected = segmenter.explain(feeds, method=method, pixel=(3, 5))
    name = segmenter.sources[0].input
    np.testing.assert_array_equal(got["attribution/" + name], expected[name])


@pytest.mark.parametrize("name", FLOAT_MODELS + TOKEN_MODELS)
@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_rows_one_by_one(zoo, explainers, name, method):
    explainer, feeds = explainers[name], _rows(zoo, name)
    batch = explainer.explain(feeds, method=method)
    for row in range(len(batch.target)):
        single = explainer.explain({k: v[row:row + 1] for k, v in feeds.items()},
                                   method=method, target=int(batch.target[row]))
        for key, value in batch.attributions.items():
            np.testing.assert_allclose(single.attributions[key][0], value[row],
                                       rtol=1e-5, atol=1e-6 * float(np.abs(value).max()))


@pytest.mark.parametrize("name", TOKEN_MODELS)
@pytest.mark.parametrize("method", METHODS)
def test_token_models_run_the_builder_at_the_embedding(zoo, explainers, name, method):
    """Export refuses token ids (one line); in-process the same builder attributes at the
    embedding: its run equals the emitted program's, saved and run alone, bit for bit."""
    explainer, feeds = explainers[name], _rows(zoo, name)
    with pytest.raises(InputError, match="no float input"):
        export_explainer(explainer.model, method)
    options = get_method(method).resolve_options({})
    run = graph_run(explainer.engine, method, feeds, None, explainer.sources, options)
    at = {s.input: s.tensor for s in explainer.sources}
    proto = standalone(emit_explainer(explainer.model, method, options, explainer.output,
                                      sources=at).proto, explainer.model.weights)
    alone = _run(proto, feeds)
    for source in explainer.sources:
        np.testing.assert_array_equal(alone["attribution/" + source.input],
                                      run.grads[source.tensor])
    for output, value in run.outputs.items():
        np.testing.assert_array_equal(alone[output], value)


def test_the_explainer_names_are_freed_or_refused():
    """A model tensor called 'target' is renamed inside the explainer; a model input of
    that name cannot be: one line, in-process and exported alike."""
    def model(input_name: str, inner: str):
        weights = numpy_helper.from_array(np.eye(2, dtype=np.float32), "w")
        nodes = [helper.make_node("MatMul", [input_name, "w"], [inner]),
                 helper.make_node("Relu", [inner], ["logits"])]
        graph = helper.make_graph(
            nodes, "named", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT,
                                                           ["N", 2])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])], [weights])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    x = np.array([[1.0, -2.0], [3.0, 4.0]], np.float32)
    renamed = model("x", "target")
    got = _run(export_explainer(renamed, "saliency"), {"x": x})
    expected = Explainer(renamed, "cpu", progress=False).explain(x, "saliency")
    np.testing.assert_array_equal(got["attribution/x"], expected["x"])
    np.testing.assert_array_equal(expected["x"], [[1.0, 0.0], [0.0, 1.0]])  # d relu(x)_c/dx
    clash = model("target", "hidden")
    for explain in (lambda: export_explainer(clash, "saliency"),
                    lambda: Explainer(clash, "cpu", progress=False).explain(x, "saliency")):
        with pytest.raises(ModelError, match="named 'target', which the explainer adds"):
            explain()
