"""Fine-tuning, neuron addition and pruning of local networks, against independent oracles:
central finite differences of the training graph's loss in float64, torch autograd, the numpy
forward of LocalLayer, and hand-built layers whose dead or misfit neurons are known."""

from __future__ import annotations

import numpy as np
import pytest

from onnxplain.errors import InputError
from onnxplain.local import (
    LocalLayer,
    LocalNetwork,
    add_neurons,
    classifier_from_data,
    fine_tune,
    mlp_from_data,
    prune,
    row_losses,
    training_graph,
)
from onnxplain.local.train import INPUT, LOSS, TARGET
from onnxplain.ops import epsilon_softmax as es
from onnxplain.runtime.session import Session

from ..conftest import require

CPU = ["CPUExecutionProvider"]


def blobs(n: int = 240, seed: int = 0, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    means = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    labels = rng.integers(0, 3, n)
    return (means[labels] + spread * rng.normal(size=(n, 2))).astype(np.float32), labels


def _layer(kind, rng, k, d, m, distance="l2", epsilon=-3.0, temperature=0.7):
    values = rng.normal(size=(k + 1, d if kind == "residual" else m))
    if kind == "classifier":
        values = np.concatenate([np.eye(m)[rng.integers(0, m, k)], np.zeros((1, m))])
    return LocalLayer(kind, rng.normal(size=(k, d)), values, distance=distance,
                      temperature=temperature, epsilon=epsilon)


def _small_network(loss: str, distance: str) -> LocalNetwork:
    rng = np.random.default_rng(7)
    if loss == "cross_entropy":
        return LocalNetwork([_layer("residual", rng, 4, 3, 3, distance),
                             _layer("classifier", rng, 5, 3, 3, distance, float("-inf"))])
    return LocalNetwork([_layer("mlp", rng, 4, 3, 4, distance),
                         _layer("mlp", rng, 3, 4, 2, distance, float("-inf"), 1.3)])


def _data(network: LocalNetwork, loss: str, n: int = 6, seed: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, network.layers[0].in_features))
    if loss == "cross_entropy":
        return x, rng.integers(0, network.layers[-1].out_features, n)
    return x, rng.normal(size=(n, network.layers[-1].out_features))


def _graph_run(network, loss, x, targets, train=("centers", "values")):
    """The float64 training graph as a function of the parameters: (loss, gradients)."""
    tg = training_graph(network, loss, train, dtype=np.float64)
    session = Session(tg.model, CPU, optimization="none")
    base = {INPUT: x, TARGET: targets, tg.seed: np.ones((), np.float64)}

    def run(params):
        out = session.run([LOSS] + [tg.grads[p] for p in params], base | params)
        return float(out[LOSS]), {p: out[tg.grads[p]] for p in params}

    start = {name: getattr(network.layers[i], part).astype(np.float64)
             for name, (i, part) in tg.params.items()}
    return run, start


@pytest.mark.parametrize("distance", es.DISTANCES)
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_parameter_gradients_match_finite_differences(loss, distance):
    network = _small_network(loss, distance)
    x, targets = _data(network, loss)
    run, params = _graph_run(network, loss, x, targets)
    assert len(params) == 4  # centers and values of both layers
    value, grads = run(params)
    # The graph's loss is the numpy forward's (float32 there, hence the tolerance).
    assert value == pytest.approx(row_losses(network, x, targets, loss).mean(), rel=1e-5)
    rng, step = np.random.default_rng(2), 1e-6
    for name, p in params.items():
        for _ in range(2):
            direction = rng.normal(size=p.shape)
            plus, _ = run(params | {name: p + step * direction})
            minus, _ = run(params | {name: p - step * direction})
            numeric = (plus - minus) / (2 * step)
            analytic = float(np.sum(grads[name] * direction))
            assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-7), name


def test_parameter_gradients_match_torch_autograd():
    torch = require("torch")
    network = _small_network("cross_entropy", "l2")
    x, labels = _data(network, "cross_entropy", n=9)
    run, params = _graph_run(network, "cross_entropy", x, labels)
    _, grads = run(params)
    leaves = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    h = torch.tensor(x)
    for i, layer in enumerate(network.layers):
        w, v = leaves[f"layer{i}/centers"], leaves[f"layer{i}/values"]
        d = ((h[:, None, :] - w[None]) ** 2).sum(-1).sqrt()
        eps = torch.full((len(h), 1), float(np.float32(layer.epsilon)), dtype=torch.float64)
        p = torch.softmax(torch.cat([-d, eps], 1) / float(np.float32(layer.temperature)), 1)
        h = p @ v + (h if layer.kind == "residual" else 0)
    share = h[torch.arange(len(h)), torch.tensor(labels)]
    (-torch.log(share.clamp_min(1e-7)).mean()).backward()
    for name, leaf in leaves.items():
        np.testing.assert_allclose(grads[name], leaf.grad.numpy(), rtol=1e-9, atol=1e-12)


def _accuracy(network, x, labels) -> float:
    return float((network.forward(x).argmax(1) == labels).mean())


def test_fine_tuning_improves_a_noisy_classifier():
    x, labels = blobs()
    # Noisy picks: centers far off their rows, so the data initialisation is imperfect.
    layer = classifier_from_data(x, labels, 9, noise=1.0, seed=0)
    network = LocalNetwork([layer])
    before = layer.centers.copy()
    result = fine_tune(network, x, labels, epochs=25, lr=0.05, providers="cpu")
    history = np.array(result.history)
    assert len(history) == 25
    assert history[-1] < 0.5 * history[0]
    assert np.sum(np.diff(history) > 0.02) <= 3  # monotone up to mini-batch noise
    tuned = result.network
    assert row_losses(tuned, x, labels).mean() < 0.5 * row_losses(network, x, labels).mean()
    assert _accuracy(tuned, x, labels) >= _accuracy(network, x, labels) + 0.03
    # Only the centers train for a classifier; the input network is untouched.
    np.testing.assert_array_equal(layer.centers, before)
    np.testing.assert_array_equal(tuned.layers[0].values, layer.values)
    assert not np.allclose(tuned.layers[0].centers, layer.centers)
    np.testing.assert_array_equal(tuned.layers[0].sources, layer.sources)


def test_fine_tuning_a_residual_then_mlp_regression():
    rng = np.random.default_rng(3)
    x = rng.uniform(-3, 3, size=(200, 1)).astype(np.float32)
    y = np.concatenate([np.sin(x), np.cos(x)], 1).astype(np.float32)
    shift = mlp_from_data(x, np.sin(2 * x), 6, residual=True, noise=0.5, seed=1)
    head = mlp_from_data(x, y, 8, noise=0.5, seed=2)
    network = LocalNetwork([shift, head])
    result = fine_tune(network, x, y, epochs=20, lr=0.02, batch_size=50)
    assert result.history[-1] < 0.5 * result.history[0]
    assert row_losses(result.network, x, y).mean() < 0.5 * row_losses(network, x, y).mean()
    for old, new in zip(network.layers, result.network.layers, strict=True):
        assert not np.allclose(old.values, new.values)  # mlp/residual train values too
        assert not np.allclose(old.centers, new.centers)


def test_the_same_seed_gives_the_same_network():
    x, labels = blobs(n=100)
    network = LocalNetwork([classifier_from_data(x, labels, 6, noise=1.0)])
    runs = [fine_tune(network, x, labels, epochs=3, batch_size=16, seed=s) for s in (5, 5, 6)]
    np.testing.assert_array_equal(runs[0].network.layers[0].centers,
                                  runs[1].network.layers[0].centers)
    assert runs[0].history == runs[1].history
    assert not np.array_equal(runs[0].network.layers[0].centers,
                              runs[2].network.layers[0].centers)


def test_train_selects_the_parameters():
    x, labels = blobs(n=60)
    layer = classifier_from_data(x, labels, 5, noise=1.0)
    tuned = fine_tune(LocalNetwork([layer]), x, labels, epochs=2, train="values").network
    np.testing.assert_array_equal(tuned.layers[0].centers, layer.centers)
    assert not np.allclose(tuned.layers[0].values, layer.values)


def _with_dead_centers():
    x, labels = blobs(n=90)
    layer = classifier_from_data(x, labels, 6, seed=2)
    far = layer.centers[:3] + 100.0  # no row comes near these
    dead = LocalLayer("classifier", np.concatenate([layer.centers[:2], far, layer.centers[2:]]),
                      np.concatenate([layer.values[:2], np.eye(3), layer.values[2:]]),
                      temperature=layer.temperature, sources=np.r_[layer.sources[:2],
                      [-1, -1, -1], layer.sources[2:]], labels=np.r_[
                      layer.labels[:2], [0, 1, 2], layer.labels[2:]])
    return x, layer, dead


def test_prune_removes_exactly_the_dead_centers():
    x, alive, dead = _with_dead_centers()
    pruned = prune(dead, x, min_activation=1e-3)
    np.testing.assert_array_equal(pruned.centers, alive.centers)
    np.testing.assert_array_equal(pruned.values, alive.values)  # epsilon row still last
    np.testing.assert_array_equal(pruned.sources, alive.sources)
    np.testing.assert_array_equal(pruned.labels, alive.labels)
    np.testing.assert_allclose(pruned.forward(x), dead.forward(x), atol=1e-6)


def test_prune_drops_centers_that_never_win_and_keeps_at_least_one():
    x, alive, _ = _with_dead_centers()
    twin = LocalLayer("classifier", np.concatenate([alive.centers, alive.centers[:1]]),
                      np.concatenate([alive.values[:-1], alive.values[:1], alive.values[-1:]]),
                      temperature=alive.temperature)
    # The duplicate ties with center 0 everywhere and argmax takes the first: it never wins.
    np.testing.assert_array_equal(prune(twin, x, min_activation=0.0, min_wins=1).centers,
                                  alive.centers)
    only = prune(alive, x, min_activation=2.0)  # no activation reaches 2
    assert only.size == 1 and only.values.shape == (2, 3)
    peak = alive.activations(x)[0].max(0)
    np.testing.assert_array_equal(only.centers[0], alive.centers[int(peak.argmax())])


def test_added_classifier_neurons_fix_the_worst_rows():
    x, labels = blobs(n=150, spread=1.3)
    layer = classifier_from_data(x, labels, 3, seed=1)
    losses = row_losses(layer, x, labels)
    worst = np.argsort(-losses, kind="stable")[:5]
    assert losses[worst].min() > 1.0  # genuinely misfit rows
    grown = add_neurons(layer, x, labels, 5)
    assert grown.size == 8
    np.testing.assert_array_equal(grown.centers[3:], x[worst])
    np.testing.assert_array_equal(grown.values[3:-1], np.eye(3)[labels[worst]])
    np.testing.assert_array_equal(grown.values[-1], layer.values[-1])
    np.testing.assert_array_equal(grown.sources, np.r_[layer.sources, worst])
    np.testing.assert_array_equal(grown.labels, np.r_[layer.labels, labels[worst]])
    assert row_losses(grown, x[worst], labels[worst]).max() < 0.7  # the label now wins
    assert layer.size == 3  # the input layer is untouched


def test_added_residual_neurons_carry_rows_to_their_targets():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(80, 2)).astype(np.float32)
    y = (x + np.sin(3 * x)).astype(np.float32)
    layer = mlp_from_data(x, y, 4, residual=True, temperature=0.05)
    grown = add_neurons(layer, x, y, 3)
    rows = grown.sources[-3:]
    assert not set(rows) & set(layer.sources)
    np.testing.assert_allclose(grown.values[4:-1], y[rows] - x[rows])
    np.testing.assert_allclose(grown.forward(x[rows]), y[rows], atol=1e-3)
    assert grown.labels is None


@pytest.mark.parametrize("call, message", [
    (lambda n, x, t: fine_tune(n, x[:, :1], t), r"x must be a non-empty float \[N, 2\]"),
    (lambda n, x, t: fine_tune(n, x.astype(int), t), "x must be a non-empty float"),
    (lambda n, x, t: fine_tune(n, x, t.astype(float)), "cross_entropy targets must be integer"),
    (lambda n, x, t: fine_tune(n, x, t + 3), r"labels must lie in \[0, 3\)"),
    (lambda n, x, t: fine_tune(n, x, t, loss="hinge"), "unknown loss 'hinge'"),
    (lambda n, x, t: fine_tune(n, x, t, loss="mse"), r"mse targets must be a float \[40, 3\]"),
    (lambda n, x, t: fine_tune(n, x, t, train=("weights",)), "train must name some of"),
    (lambda n, x, t: fine_tune(n, x, t, epochs=0), "epochs must be a positive integer"),
    (lambda n, x, t: fine_tune(n, x, t, lr=-1.0), "lr must be positive"),
    (lambda n, x, t: add_neurons(n.layers[0], x, t, 0), "count must be a positive integer"),
])
def test_bad_inputs_raise_input_errors(call, message):
    x, labels = blobs(n=40)
    network = LocalNetwork([classifier_from_data(x, labels, 4)])
    with pytest.raises(InputError, match=message) as info:
        call(network, x, labels)
    assert "\n" not in str(info.value)


def test_cross_entropy_needs_a_classifier():
    x = np.zeros((4, 2), np.float32)
    network = LocalNetwork([mlp_from_data(x + np.arange(4)[:, None], x, 2)])
    with pytest.raises(InputError, match="cross_entropy needs a classifier"):
        fine_tune(network, x, np.zeros(4, np.int64), loss="cross_entropy")
