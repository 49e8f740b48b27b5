"""One graph per method for the perturbation family (issue 19, items 1-2): occlusion and RISE
run in-process the very program `export` saves (export.perturb's forward Loop), so the
exported model's attributions equal Explainer.explain's bit for bit at the same rows per
iteration; the original outputs are the model's own; a batch explains as its rows one by
one; the baseline is a program input (a new baseline is a new feed, not a new program);
token ids, label heads and output seeds take the same program."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxplain import Explainer
from onnxplain.errors import InputError
from onnxplain.exporter import export_explainer
from onnxplain.runtime.session import Session

from ..methods.test_rise import token_model
from .test_export import _run
from .test_same_program import _program_count

# Export's rows per Loop iteration (export.LOOP_ROWS); in-process runs take batch_size rows
# per iteration, so batch_size=16 makes the two programs the same.
LOOP_ROWS = 16
OPTIONS = {"occlusion": {"window": 4, "stride": 3, "baseline": 0.25},
           "rise": {"n_masks": 40, "grid": 4, "keep": 0.4, "seed": 3, "baseline": 0.1}}


def _rows(zoo, name: str, count: int = 3) -> dict[str, np.ndarray]:
    return {k: v[:count] for k, v in zoo.sample(name).items()}


@pytest.fixture(scope="module")
def explainers(zoo):
    return {name: Explainer(str(zoo.model_path(name)), "cpu", progress=False)
            for name in ("digits_cnn", "rgb_cnn")}


def _plain_outputs(explainer, feeds) -> dict[str, np.ndarray]:
    return Session(explainer.model.proto, ["CPUExecutionProvider"],
                   weights=explainer.model.weights).run(None, feeds)


@pytest.mark.parametrize("name", ["digits_cnn", "rgb_cnn"])
@pytest.mark.parametrize("method", ["occlusion", "rise"])
def test_exported_equals_in_process_bit_for_bit(explainers, zoo, name, method):
    explainer, feeds = explainers[name], _rows(zoo, name)
    (key, x), = feeds.items()
    options = OPTIONS[method]
    got = _run(export_explainer(explainer.model, method, **options), feeds)
    expected = explainer.explain(feeds, method=method, batch_size=LOOP_ROWS, **options)
    np.testing.assert_array_equal(got["attribution/" + key], expected[key])
    np.testing.assert_array_equal(got["target_used"], expected.target)
    assert float(np.abs(expected[key]).max()) > 0  # an oracle that can fail
    for output, value in _plain_outputs(explainer, feeds).items():
        np.testing.assert_allclose(got[output], value, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(expected.outputs[output], value, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["digits_cnn", "rgb_cnn"])
@pytest.mark.parametrize("method", ["occlusion", "rise"])
def test_batch_equals_rows_one_by_one(explainers, zoo, name, method):
    explainer, feeds = explainers[name], _rows(zoo, name)
    (key, x), = feeds.items()
    batch = explainer.explain(feeds, method=method, **OPTIONS[method])
    for row in range(len(x)):
        single = explainer.explain({key: x[row:row + 1]}, method=method,
                                   target=int(batch.target[row]), **OPTIONS[method])
        np.testing.assert_allclose(single[key][0], batch[key][row], rtol=1e-5,
                                   atol=1e-6 * float(np.abs(batch[key]).max()))


@pytest.mark.parametrize("method", ["occlusion", "rise"])
def test_a_new_baseline_is_a_new_feed(explainers, zoo, method):
    explainer, feeds = explainers["rgb_cnn"], _rows(zoo, "rgb_cnn")
    (key, x), = feeds.items()
    options = {**OPTIONS[method], "baseline": 0.0}
    explainer.explain(feeds, method=method, batch_size=LOOP_ROWS, **options)
    built = _program_count(explainer)
    other = np.random.default_rng(2).random(x.shape[1:]).astype(x.dtype)
    moved = explainer.explain(feeds, method=method, batch_size=LOOP_ROWS,
                              **{**options, "baseline": other})
    assert _program_count(explainer) == built
    exported = export_explainer(explainer.model, method, **options)
    fed = _run(exported, {**feeds, "baseline/" + key: np.repeat(other[None], len(x), axis=0)})
    np.testing.assert_array_equal(fed["attribution/" + key], moved[key])
    baked = _run(export_explainer(explainer.model, method, **{**options, "baseline": other}),
                 feeds)
    np.testing.assert_array_equal(baked["attribution/" + key], moved[key])


@pytest.mark.parametrize("method", ["occlusion", "rise"])
def test_output_seeds_are_the_same_program(explainers, zoo, method):
    explainer, feeds = explainers["rgb_cnn"], _rows(zoo, "rgb_cnn")
    row = np.random.default_rng(1).standard_normal(10).astype(np.float32)
    got = _run(export_explainer(explainer.model, method, output_seed=row, **OPTIONS[method]),
               feeds)
    seeds = np.repeat(row[None], len(feeds["image"]), axis=0)
    expected = explainer.explain(feeds, method=method, output_seed=seeds,
                                 batch_size=LOOP_ROWS, **OPTIONS[method])
    np.testing.assert_array_equal(got["attribution/image"], expected["image"])


@pytest.mark.parametrize("method", ["occlusion", "rise"])
def test_token_ids_are_the_same_program(method):
    model = token_model(np.random.default_rng(4).standard_normal((10, 2)).astype(np.float32))
    explainer = Explainer(model, "cpu", progress=False)
    ids = np.array([[1, 4, 2, 7, 3], [5, 5, 0, 9, 8]], dtype=np.int64)
    options = {"occlusion": {"baseline": 0}, "rise": {"n_masks": 64, "baseline": 2}}[method]
    got = _run(export_explainer(model, method, **options), {"ids": ids})
    expected = explainer.explain(ids, method=method, batch_size=LOOP_ROWS, **options)
    np.testing.assert_array_equal(got["attribution/ids"], expected["ids"])
    assert got["attribution/ids"].dtype == np.float32


def _argmax_head() -> onnx.ModelProto:
    """x [N, 4] -> label [N] (ArgMax of x @ w): a model that outputs only its decision."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3],
                           np.random.default_rng(0).standard_normal(12).tolist())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["scores"]),
         helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0)], "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


@pytest.mark.filterwarnings("ignore:every attribution is 0")  # a row no zero flips
@pytest.mark.parametrize("method", ["occlusion", "rise"])
def test_label_heads_are_explained_by_their_decision_in_the_same_program(method):
    model = _argmax_head()
    explainer = Explainer(model, "cpu", progress=False)
    x = np.random.default_rng(3).standard_normal((4, 4)).astype(np.float32)
    options = {"occlusion": {"baseline": 0.0}, "rise": {"n_masks": 32}}[method]
    got = _run(export_explainer(model, method, **options), {"x": x})
    expected = explainer.explain(x, method=method, batch_size=LOOP_ROWS, **options)
    np.testing.assert_array_equal(got["attribution/x"], expected["x"])
    np.testing.assert_array_equal(got["label"], expected.outputs["label"])
    np.testing.assert_array_equal(expected.target, expected.outputs["label"])
    if method == "occlusion":  # a drop of 1 where zeroing the element changes the decision
        for row in range(len(x)):
            for column in range(4):
                occluded = x[row:row + 1].copy()
                occluded[0, column] = 0
                changed = explainer.forward(occluded)["label"][0] != expected.target[row]
                assert expected["x"][row, column] == float(changed)


def test_exports_need_a_fixed_row_shape(zoo, tmp_path):
    proto = onnx.load(zoo.model_path("digits_cnn"))
    proto.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    with pytest.raises(InputError, match="fixed row shape"):
        export_explainer(proto, "occlusion")


@pytest.mark.parametrize("method", ["occlusion", "rise"])
def test_rows_per_iteration_is_a_feed_not_a_program(explainers, zoo, method):
    """batch_size sets the copies per Loop iteration through the rows_per_iteration input:
    the program is built once, the result moves by rounding only, and the exported model
    fed the same value gives the same numbers."""
    explainer, feeds = explainers["digits_cnn"], _rows(zoo, "digits_cnn")
    (key, x), = feeds.items()
    wide = explainer.explain(feeds, method=method, batch_size=LOOP_ROWS, **OPTIONS[method])
    built = _program_count(explainer)
    narrow = explainer.explain(feeds, method=method, batch_size=4, **OPTIONS[method])
    assert _program_count(explainer) == built
    np.testing.assert_allclose(narrow[key], wide[key], rtol=1e-5,
                               atol=1e-6 * float(np.abs(wide[key]).max()))
    exported = export_explainer(explainer.model, method, **OPTIONS[method])
    fed = _run(exported, {**feeds, "rows_per_iteration": np.array(4, np.int64)})
    np.testing.assert_array_equal(fed["attribution/" + key], narrow[key])


def test_a_label_head_explains_an_explicit_target():
    """An ArgMax head scores whether each occluded copy keeps the asked class: occlusion with
    one-element windows is the drop of that indicator, computed here in numpy."""
    weights = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["scores"]),
         helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0)], "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])],
        [helper.make_tensor("w", TensorProto.FLOAT, [4, 3], weights.ravel().tolist())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=9)
    x = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
    explainer = Explainer(model, "cpu", progress=False)
    for target in (0, 1, 2):
        got = explainer.explain(x, "occlusion", target=target, window=1)
        kept = [(np.argmax(rows @ weights, axis=1) == target).astype(float)
                for rows in [x] + [np.where(np.eye(4)[i] > 0, 0, x) for i in range(4)]]
        expected = np.stack([kept[0] - kept[1 + i] for i in range(4)], axis=1)
        np.testing.assert_array_equal(got.target, np.full(5, target))
        np.testing.assert_allclose(got["x"], expected, atol=1e-7)


def test_a_program_that_does_not_load_is_not_blamed_on_the_copies(zoo, monkeypatch):
    """When ONNX Runtime cannot load a perturbation program although it loads the model, the
    error is the load's own (onnxplain's failure), with no retry one copy at a time and no
    claim that perturbing the input removed something the model needs."""
    import warnings

    from onnxplain.errors import SessionLoadError
    from onnxplain.runtime.engine import Engine

    explainer = Explainer(str(zoo.model_path("digits_cnn")), "cpu", progress=False)
    feeds = _rows(zoo, "digits_cnn", 2)
    calls = []

    def broken(self, *args, **kwargs):
        calls.append(1)
        raise SessionLoadError("ONNX Runtime could not load the model: a broken program")

    monkeypatch.setattr(Engine, "run_program", broken)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no BatchNotice
        with pytest.raises(SessionLoadError, match="a broken program"):
            explainer.explain(feeds, "occlusion", window=4)
    assert len(calls) == 1
