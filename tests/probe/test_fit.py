"""Decoder probes (onnxplain.probe.fit): the trained linear decoder against its closed form,
the decoders' ONNX emission and gradients against torch, and bad input as one-line errors.

The ridge oracle. The linear decoder's loss J(W, b) = mean((A W + b - X)^2) + ridge ||W||^2
is quadratic, so for its minimiser (W*, b*) and any (W, b), exactly,
    J(W, b) - J(W*, b*) = mean((A dW + db)^2) + ridge ||dW||^2,   dW = W - W*, db = b - b*,
where the first term is the mean squared difference between the two decoders'
reconstructions. The identity only holds at the true minimiser (elsewhere a linear term
remains), so checking it checks the closed form; and the objective gap then bounds how far
the trained decoder's reconstructions are from the closed form's: RMS <= sqrt(gap).
Full-batch Adam from random weights reaches the closed form's objective within 2% here
(0.6% and 0.9% measured on digits_mlp's two hidden layers after 1000 steps at lr 0.3), so
the trained reconstructions lie within sqrt(0.02 J*) ~ 0.02 (pixels in [0, 1]) of the
closed form's.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnxplain.errors import InputError
from onnxplain.probe.data import tap
from onnxplain.probe.fit import fit_probe, linear_rows, split_rows
from onnxplain.probe.ridge import ridge_objective, ridge_solution
from onnxplain.probe.training import reconstruct

from .ridge_decoders import ridge_decoder

MLP_LAYERS = ["/1/Relu_output_0", "/3/Relu_output_0"]
CNN_LAYER = "/features/features.4/MaxPool_output_0"
CONV1 = "/features/features.1/Relu_output_0"
RIDGE = 1e-3


@pytest.fixture(scope="module")
def mlp_path(zoo):
    return str(zoo.model_path("digits_mlp"))


def _closed_form_gap(decoder, a, x):
    """(J*, J(trained), gap identity's right-hand side) on the rows a, x."""
    a, x = linear_rows(decoder, a, x)
    weight, bias = ridge_solution(a, x, RIDGE)
    best = ridge_objective(a, x, weight, bias, RIDGE)
    trained_w = decoder.params["weight"].astype(np.float64)
    trained_b = decoder.params["bias"].astype(np.float64)
    trained = ridge_objective(a, x, trained_w, trained_b, RIDGE)
    dw, db = trained_w - weight, trained_b - bias
    rhs = float(((a @ dw + db) ** 2).mean() + RIDGE * (dw ** 2).sum())
    return best, trained, rhs


def test_trained_linear_decoder_reaches_the_ridge_solution(mlp_path, digits_split):
    x = digits_split[0][:600].reshape(600, -1)
    fitted = fit_probe(mlp_path, MLP_LAYERS, x, decoder="linear", linear_init="random",
                       ridge=RIDGE, epochs=1000, batch_size=600, lr=0.3, holdout=0.0)
    data = tap(mlp_path, MLP_LAYERS, x)
    for decoder in fitted.decoders:
        a, target = data.activations[decoder.layer], data.targets[decoder.target]
        best, trained, rhs = _closed_form_gap(decoder, a, target)
        assert trained >= best * (1 - 1e-9)  # nothing beats the minimiser
        assert trained - best == pytest.approx(rhs, rel=1e-3, abs=1e-9)
        assert trained - best <= 0.02 * best
        # The graph's loss is J: full batch, the last epoch's loss is J one step earlier.
        assert fitted.info["layers"][decoder.layer]["history"][-1] == pytest.approx(
            trained, rel=0.01)
        closed = fit_probe(mlp_path, [decoder.layer], x, decoder="linear", ridge=RIDGE,
                           holdout=0.0).decoders[0]
        gap = np.sqrt(((reconstruct(decoder, a) - reconstruct(closed, a)) ** 2).mean())
        assert gap <= np.sqrt(trained - best) + 1e-4


@pytest.mark.parametrize("layer, rows", [(CNN_LAYER, 800), (CONV1, 120)])
def test_shipped_linear_decoder_is_the_closed_form(digits_path, digits_split, layer, rows):
    """Against the normal equations with an appended column of ones (no penalty on it),
    solved by ridge_decoders.ridge_decoder. J's penalty is ridge ||W||^2 beside a mean over
    the M rows and P pixels, so the oracle's penalty is ridge * M * P. The conv1 layer has
    1024 features and 90 fitting rows: ridge_solution takes its dual form there (the
    MaxPool layer, 512 features and 600 rows, the primal one)."""
    x = digits_split[0][:rows]
    fitted = fit_probe(str(digits_path), [layer], x, decoder="linear", ridge=RIDGE,
                       holdout=0.25, seed=3)
    decoder, info = fitted.decoders[0], fitted.info["layers"][layer]
    assert info["solver"] == "closed-form ridge" and info["history"] == []
    data = tap(str(digits_path), [layer], x)
    fit, held = split_rows(rows, 0.25, 3)
    acts, target = data.activations[layer], data.targets["image"]
    assert (np.prod(acts.shape[1:]) > len(fit)) == (layer == CONV1)
    oracle = ridge_decoder(layer, "image", acts[fit], target[fit],
                           ridge=RIDGE * len(fit) * target[0].size)
    np.testing.assert_allclose(decoder.params["weight"], oracle.params["weight"], rtol=1e-3,
                               atol=1e-5)
    np.testing.assert_allclose(decoder.params["bias"], oracle.params["bias"], atol=1e-5)
    # ONNX Runtime's reconstruction is the numpy map, and info's error is its mean square.
    a = acts[held].reshape(len(held), -1).astype(np.float64)
    x_hat = a @ oracle.params["weight"] + oracle.params["bias"]
    np.testing.assert_allclose(reconstruct(decoder, acts[held]).reshape(len(held), -1), x_hat,
                               atol=1e-4)
    wanted = target[held].reshape(len(held), -1)
    assert info["held_out"]["mse"] == pytest.approx(((x_hat - wanted) ** 2).mean(), rel=1e-3)
    assert info["held_out"]["relative_mse"] == pytest.approx(
        ((x_hat - wanted) ** 2).mean() / wanted.var(axis=0).mean(), rel=1e-3)


@pytest.mark.parametrize("layer_shape, target_shape, kind, masked", [
    ((64, 4, 4), (1, 8, 8), "conv", False), ((16, 3, 3), (1, 8, 8), "conv", False),
    ((5, 7), (5, 3), "linear", False), ((5, 7), (5, 3), "linear", True),
    ((64,), (1, 8, 8), "linear", False)])
def test_emitted_decoders_and_their_gradients_match_torch(layer_shape, target_shape, kind,
                                                          masked):
    """emit_decoder's nodes and onnxplain's gradients of the training loss, against the same
    decoder written in torch (bilinear upsampling with half-pixel centres, as ONNX's Resize
    linear mode), on random weights and activations; `masked`: the squared error averaged
    over the positions marked real only (padding left out)."""
    torch = pytest.importorskip("torch")
    from onnxplain.autodiff import differentiate
    from onnxplain.probe.decoders import init_decoder
    from onnxplain.probe.training import ACTIVATION, LOSS, REAL, TARGET, training_model
    from onnxplain.runtime.session import Session

    rng = np.random.default_rng(0)
    decoder = init_decoder("a", "x", kind, layer_shape, target_shape, rng)
    decoder.params = {k: (v + rng.normal(size=v.shape) * 0.1).astype(np.float32)
                      for k, v in decoder.params.items()}
    a = rng.normal(size=(3, *layer_shape)).astype(np.float32)
    x = rng.normal(size=(3, *target_shape)).astype(np.float32)
    real = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], np.float32)
    model, names = training_model(decoder, None, masked=masked)
    diff = differentiate(model, list(names.values()), outputs=[LOSS])
    feeds = {ACTIVATION: a, TARGET: x, diff.seeds[LOSS]: np.ones((), np.float32),
             "probe/ridge": np.array(0.5, np.float32)}
    if masked:
        feeds[REAL] = real
    feeds |= {names[k]: v for k, v in decoder.params.items()}
    got = Session(diff.model, ["CPUExecutionProvider"]).run(
        [LOSS, *(diff.grads[n] for n in names.values())], feeds)

    p = {k: torch.from_numpy(v).requires_grad_() for k, v in decoder.params.items()}
    ta = torch.from_numpy(a)
    if kind == "conv":
        functional = torch.nn.functional
        h = torch.relu(functional.conv2d(ta, p["weight1"], p["bias1"], padding=1))
        if layer_shape[1:] != target_shape[1:]:
            h = functional.interpolate(h, size=target_shape[1:], mode="bilinear",
                                       align_corners=False)
        x_hat = functional.conv2d(h, p["weight2"], p["bias2"], padding=1)
        penalty = 0.0  # the conv decoder is not penalised
    else:
        flat = ta if decoder.per_position else ta.reshape(3, -1)
        x_hat = (flat @ p["weight"] + p["bias"]).reshape(3, *target_shape)
        penalty = 0.5 * (p["weight"] ** 2).sum()
    squares = (x_hat - torch.from_numpy(x)) ** 2
    if masked:
        weights = torch.from_numpy(real)[..., None]
        loss = (squares * weights).sum() / (weights.sum() * target_shape[-1]) + penalty
    else:
        loss = squares.mean() + penalty
    loss.backward()
    assert float(got[LOSS]) == pytest.approx(loss.item(), rel=1e-5)
    for key, name in names.items():
        np.testing.assert_allclose(got[diff.grads[name]], p[key].grad.numpy(), rtol=1e-4,
                                   atol=1e-6 * float(p[key].grad.abs().max()))


def test_bad_input_is_one_line_input_error(digits_path, digits_split, mlp_path):
    path, x = str(digits_path), digits_split[0][:40]
    cases = [
        (dict(layers=["nope"]), "no tensor or node named 'nope'"),
        (dict(layers=[]), "non-empty list"),
        (dict(layers="/ReduceMean_output_0"), "non-empty list"),
        (dict(inputs=x[:2]), "too few"),
        (dict(inputs=np.where(np.arange(64).reshape(1, 1, 8, 8) == 3, np.nan, x)),
         "non-finite"),
        (dict(decoder="deep"), "unknown decoder 'deep'"),
        (dict(decoder="conv", layers=["/ReduceMean_output_0"]), "spatial layer"),
        (dict(ridge=-1.0), "ridge must be"),
        (dict(epochs=0), "epochs must be"),
        (dict(lr=float("nan")), "lr must be"),
        (dict(holdout=1.0), "holdout must be"),
        (dict(classifier_weight=float("inf")), "classifier_weight must be"),
        (dict(labels=np.arange(3)), "labels must be 40"),
        (dict(linear_init="zeros"), "unknown linear_init"),
    ]
    for changes, message in cases:
        kwargs = {"layers": ["/ReduceMean_output_0"], "inputs": x} | changes
        layers, inputs = kwargs.pop("layers"), kwargs.pop("inputs")
        with pytest.raises(InputError, match=message) as caught:
            fit_probe(path, layers, inputs, epochs=kwargs.pop("epochs", 1), **kwargs)
        assert "\n" not in str(caught.value)
    with pytest.raises(InputError, match="target 'image' is not a model input"):
        fit_probe(mlp_path, ["/1/Relu_output_0"], x.reshape(40, -1), target="image")
