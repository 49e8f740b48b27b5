"""The typed objective (objective.Objective): for each kind (a class per row, class labels, one
value per row, output-seed weights, dense objectives), the row selection (take, repeat, tile),
the explained score, and what the gradient program is fed, each against numpy by hand; the
gradients a fed objective produces against the weights of a linear model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.errors import InputError
from onnxplain.graph.model import Model
from onnxplain.objective import (
    CLASS,
    LABELS,
    SEEDED,
    SPATIAL,
    VALUE,
    Objective,
    OutputSeed,
    describe_objective,
    make_place,
    resolve_dense,
)
from onnxplain.runtime.perturb import perturbed_scores

RNG = np.random.default_rng(7)
W = RNG.normal(size=(4, 3)).astype(np.float32)
X = RNG.normal(size=(5, 4)).astype(np.float32)


def linear(spatial_ones: bool = False) -> onnx.ModelProto:
    """y = x @ W, [N, 3] (or [N, 3, 1, 1], as the classic zoo's SqueezeNet ends)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    dims = ["N", 3, 1, 1] if spatial_ones else ["N", 3]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["s" if spatial_ones else "y"])]
    inits = [numpy_helper.from_array(W, "W")]
    if spatial_ones:
        nodes.append(helper.make_node("Unsqueeze", ["s", "axes"], ["y"]))
        inits.append(numpy_helper.from_array(np.array([2, 3], np.int64), "axes"))
    graph = helper.make_graph(nodes, "linear", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def explainer(model: onnx.ModelProto) -> onnxplain.Explainer:
    return onnxplain.Explainer(model.SerializeToString(), progress=False)


def test_a_class_per_row_selects_scores_and_repeats_rows():
    y = X @ W
    predicted = Objective.resolve(None, y)
    assert predicted.kind == CLASS and predicted.name == "class"
    np.testing.assert_array_equal(predicted.values, y.argmax(axis=1))
    chosen = Objective.resolve([0, 2, 1, 1, 0], y)
    np.testing.assert_array_equal(Objective.resolve(2, y).values, np.full(5, 2))
    np.testing.assert_array_equal(chosen.score(y), y[np.arange(5), [0, 2, 1, 1, 0]])
    np.testing.assert_array_equal(chosen.repeat(3).values, [0, 0, 0, 2, 2, 2, 1, 1, 1, 1,
                                                            1, 1, 0, 0, 0])
    np.testing.assert_array_equal(chosen.tile(2).values, [0, 2, 1, 1, 0] * 2)
    np.testing.assert_array_equal(chosen.take([4, 1]).values, [0, 2])
    np.testing.assert_array_equal(chosen.feed(), [0, 2, 1, 1, 0])
    np.testing.assert_array_equal(chosen.classes, [0, 2, 1, 1, 0])
    stacked = np.concatenate([y, 2 * y])
    np.testing.assert_array_equal(chosen.tile(2).score(stacked),
                                  np.concatenate([y, 2 * y])[np.arange(10), [0, 2, 1, 1, 0] * 2])
    assert chosen.describe("y") == describe_objective("class", "y")
    with pytest.raises(InputError, match="out of range"):
        Objective.resolve(3, y)


def test_n_c_1_1_outputs_are_class_scores():
    y = (X @ W)[:, :, None, None]
    objective = Objective.resolve(None, y)
    assert objective.kind == CLASS
    np.testing.assert_array_equal(objective.values, y[:, :, 0, 0].argmax(axis=1))
    np.testing.assert_array_equal(objective.score(y), y[np.arange(5), objective.values, 0, 0])


@pytest.mark.parametrize("spatial_ones", [False, True])
def test_the_fed_objective_gives_the_gradient_of_its_score(spatial_ones):
    engine = explainer(linear(spatial_ones)).engine
    y = X @ W
    objective = Objective.resolve([0, 2, 1, 1, 0], y if not spatial_ones else y[..., None, None])
    # Rows stacked twice (IG's path points): each copy is the gradient of its row's class.
    run = engine.gradients({"x": np.concatenate([X, 2 * X])}, objective.tile(2).feed(), ["x"])
    np.testing.assert_allclose(run.grads["x"], W[:, [0, 2, 1, 1, 0] * 2].T, rtol=1e-6)
    weights = RNG.normal(size=(5, 3)).astype(np.float32)
    seeded = Objective.resolve(OutputSeed(weights.reshape(y.shape + (1,) * spatial_ones * 2)), y)
    run = engine.gradients({"x": np.repeat(X, 2, axis=0)}, seeded.repeat(2).feed(), ["x"])
    np.testing.assert_allclose(run.grads["x"], np.repeat(weights @ W.T, 2, axis=0),
                               rtol=1e-5, atol=1e-6)


def test_label_outputs_score_whether_the_class_was_chosen():
    labels = np.array([2, 0, 1, 2], np.int64)
    predicted = Objective.resolve(None, labels)
    assert predicted.kind == LABELS and predicted.name == "class"
    np.testing.assert_array_equal(predicted.values, labels)
    np.testing.assert_array_equal(predicted.score(np.array([2, 1, 1, 0])), [1, 0, 1, 0])
    top_k = np.array([[1, 0], [2, 1], [1, 2], [0, 2]], np.int64)  # a TopK head: best first
    given = Objective.resolve(1, top_k)
    np.testing.assert_array_equal(given.values, [1, 1, 1, 1])
    np.testing.assert_array_equal(given.score(top_k), [1, 0, 1, 0])
    np.testing.assert_array_equal(given.repeat(2).score(np.repeat(top_k, 2, axis=0)),
                                  [1, 1, 0, 0, 1, 1, 0, 0])


def test_one_value_per_row_is_its_own_score():
    values = RNG.normal(size=6).astype(np.float32)
    objective = Objective.resolve(None, values)
    assert objective.kind == VALUE and objective.name == "sum" and objective.classes is None
    assert objective.repeat(3).feed() is None and objective.tile(2).take([0]).feed() is None
    np.testing.assert_array_equal(objective.score(values), values.astype(np.float64))
    with pytest.raises(InputError, match="pass an output seed"):
        objective.score(np.zeros((2, 3, 4, 5, 6), np.float32))


def test_output_seeds_weight_the_output():
    logits = RNG.normal(size=(3, 4, 5)).astype(np.float32)
    seed = RNG.normal(size=(3, 4, 5)).astype(np.float32)
    objective = Objective.resolve(OutputSeed(seed), logits)
    assert objective.kind == SEEDED and objective.name == "output_seed"
    assert objective.classes is None
    expected = (seed.astype(np.float64) * logits).sum(axis=(1, 2))
    np.testing.assert_allclose(objective.score(logits), expected, rtol=1e-6)
    fed = objective.repeat(2).feed()
    assert isinstance(fed, OutputSeed)
    np.testing.assert_array_equal(fed.values, np.repeat(seed, 2, axis=0))
    np.testing.assert_allclose(objective.repeat(2).score(np.repeat(logits, 2, axis=0)),
                               np.repeat(expected, 2), rtol=1e-6)
    np.testing.assert_array_equal(objective.tile(2).take([3]).values, seed[[0]])
    assert objective.describe("logits") == describe_objective("output_seed", "logits")


def spatial_model() -> Model:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 5])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "seg", [x], [y])
    return Model.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
                      .SerializeToString())


@pytest.mark.parametrize("place", [None, (1, 2)])
def test_a_dense_objective_scores_the_predicted_class_per_pixel(place):
    maps = RNG.normal(size=(2, 3, 4, 5)).astype(np.float32)
    dense = resolve_dense(spatial_model(), SPATIAL, "y", {"x": maps}, {"y": maps}, None,
                          make_place(pixel=place))
    objective = Objective.resolve(OutputSeed(dense.seed, dense.outputs), maps)
    expected = (maps.max(axis=1).sum(axis=(1, 2)) if place is None
                else maps[:, :, place[0], place[1]].max(axis=1))
    np.testing.assert_allclose(objective.score(maps), expected, rtol=1e-6)
    # Perturbed copies keep the seed of their row: a copy scaled by 2 scores twice as much.
    doubled = np.concatenate([maps, 2 * maps])
    np.testing.assert_allclose(objective.tile(2).score(doubled),
                               np.concatenate([expected, 2 * expected]), rtol=1e-6)


@pytest.mark.parametrize("batch_size", [None, 3])
def test_perturbed_copies_are_scored_with_their_rows_objective(batch_size):
    """Chunks of 3 mix copies of different rows: each takes its own row's class."""
    engine = explainer(linear()).engine
    engine = engine.with_policy(engine.policy.derive(batch_size=batch_size))
    feeds = {"x": X[:2]}
    objective = Objective.resolve([2, 0], X[:2] @ W)

    def make(row: int, start: int, stop: int) -> dict[str, np.ndarray]:
        scales = np.arange(start, stop, dtype=np.float32)[:, None] + 1
        return {"x": scales * X[row]}

    scores = perturbed_scores(engine, feeds, objective, make, 4)
    expected = np.array([[(k + 1) * (X[row] @ W)[c] for k in range(4)]
                         for row, c in enumerate([2, 0])])
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    legacy = perturbed_scores(engine, feeds, np.array([2, 0]), make, 4)
    np.testing.assert_array_equal(legacy, scores)
